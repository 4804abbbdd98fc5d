# shellcheck shell=bash
# render_template FILE NAME=VALUE...: print FILE with every {{NAME}} replaced by VALUE.
#
# The files in monitoring/ name the deployment's resources and thresholds as {{NAME}}
# placeholders (monitoring/README.md lists them). Pure bash: deploy.sh sources this file (or
# copies the function) and renders each file before passing it to gcloud. It fails, printing
# nothing, when a value could break the JSON (a quote, a backslash, a control character) or
# when FILE names a placeholder that no NAME=VALUE gives.
render_template() {
  local file=$1 text pair name value
  shift
  text=$(<"$file") || return 1
  for pair in "$@"; do
    name=${pair%%=*}
    value=${pair#*=}
    if [[ $pair != *=* || ! $name =~ ^[A-Z][A-Z0-9_]*$ ]]; then
      echo "render_template: '$pair' is not NAME=VALUE" >&2
      return 1
    fi
    if [[ $value == *[\"\\]* || $value == *[[:cntrl:]]* ]]; then
      echo "render_template: the value of $name holds a quote, backslash or control character" >&2
      return 1
    fi
    # Quoted, the replacement is literal (bash 5.2 would otherwise expand & in it).
    text=${text//"{{$name}}"/"$value"}
  done
  if [[ $text =~ \{\{[A-Z][A-Z0-9_]*\}\} ]]; then
    echo "render_template: $file: no value for ${BASH_REMATCH[0]}" >&2
    return 1
  fi
  printf '%s\n' "$text"
}
