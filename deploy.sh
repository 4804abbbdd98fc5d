#!/usr/bin/env bash
# deploy.sh: a GCP project, empty or not, to a verified ride-prediction Cloud Run function fed by
# its own Pub/Sub push subscription, unattended (never a prompt). `deploy` (the default) creates
# or updates everything and puts back what drifted, `verify` sends the tutorial's ride through,
# `logs` shows the function's logs, `destroy` deletes what deploy.sh made; --dry-run prints the
# gcloud commands instead. Each step reads the state first, so a second run changes nothing.
# Every setting and grant, and the documentation behind each: docs/deploy.md.
set -euo pipefail
export CLOUDSDK_CORE_DISABLE_PROMPTS=1 # where gcloud would ask, the answer is already made

SCRIPT_NAME=deploy.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Cost defaults, in one place: docs/cost.md's "How to choose" sets them. Billing "request": CPU
# only during requests, plus a fee per request; "instance": CPU for the instance's life, no request
# fee (https://cloud.google.com/run/docs/configuring/billing-settings). From a steady STEADY_RATE
# messages a second (single rides break even at 9.5), instance-based billing is cheaper and the
# per-message log line outgrows Cloud Logging's free 50 GiB: --expected-rate picks both.
STEADY_RATE=10
DEFAULT_BILLING=request # without --expected-rate: bursty or unknown traffic
DEFAULT_CONCURRENCY=32
#                              request-based  instance-based
declare -A MIN_INSTANCES_FOR_BILLING=([request]=0 [instance]=1)
declare -A PUBLISH_RPCS_FOR_BILLING=([request]=4 [instance]=4) # the function's PUBLISH_MAX_RPCS_IN_FLIGHT
declare -A MESSAGE_LOG_FOR_RATE=([below]=INFO [steady]=DEBUG)   # MESSAGE_LOG_LEVEL; rejections log at ERROR
declare -A REQUEST_LOG_FOR_RATE=([below]=keep [steady]=exclude) # Cloud Run's request log entry per push
# The alerts' thresholds (docs/operations.md, "Alerts", says why these).
DEFAULT_BACKLOG_AGE_SECONDS=300 DEFAULT_ERROR_RATIO=0.05 DEFAULT_NO_PREDICTIONS_SECONDS=600

# The runtime files: the `!/FILE` lines of .gcloudignore, the one list the upload follows.
mapfile -t RUNTIME_FILES < <(sed -n 's|^!/||p' "$SCRIPT_DIR/.gcloudignore")
PUSH_SETTINGS_FILE="$SCRIPT_DIR/push-subscription.env" # shared with devstack/push_subscription.py
CLEANUP_POLICY_FILE="$SCRIPT_DIR/artifact-cleanup-policy.json"
CLEANUP_POLICY_STATE='5|2592000s' # what Artifact Registry reports for that file
ENTRY_POINT=predict_duration
MANAGED_MARK=managed-by=deploy-sh
SAMPLE_RIDE='{"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}' # the tutorial's
REQUIRED_APIS=(artifactregistry.googleapis.com cloudbuild.googleapis.com iam.googleapis.com
  cloudresourcemanager.googleapis.com logging.googleapis.com pubsub.googleapis.com
  run.googleapis.com storage.googleapis.com monitoring.googleapis.com telemetry.googleapis.com)
# Errors of documented propagation delays, retried (bounded); any other error stops the script:
# Service Usage's own text, a new service account IAM does not see yet, concurrent IAM edits
# (https://cloud.google.com/iam/docs/access-change-propagation).
TRANSIENT_ERRORS=('If you enabled this API recently, wait a few minutes'
  '[Ss]ervice account [^ ]+ does not exist' 'There were concurrent policy changes')
# A build or deploy refused for want of a permission: retried only in a run that just made grants.
FRESH_GRANT_ERRORS=('Build failed.*([Pp]ermission|[Dd]enied|does not have .* access)'
  'Permission denied on secret')

usage() {
  cat <<USAGE
Usage: ./$SCRIPT_NAME [deploy|verify|logs|destroy] [options]        (docs/deploy.md)

  deploy    (default) create or update everything, put back what drifted; verify if anything
            changed. verify: the tutorial's ride (attribute deploy_verify) to its prediction.
  logs      the function's logs.   destroy: delete every resource and grant deploy.sh made.
Options (flags only; defaults in brackets):
  --project ID [gcloud config]  --region R [us-central1]  --function-name N [ride-prediction]
  --model-uri URI               required: gs://BUCKET/.../model or models:/NAME@ALIAS
  --model-bucket B              bucket the function may read [a gs:// model's]
  --allow-pickle|--no-allow-pickle  MLFLOW_ALLOW_PICKLE_DESERIALIZATION [gs://: what the
                                model's MLmodel needs; registry URIs: you must choose]
  --mlflow-tracking-uri URI     (credentials never in it: Secret Manager, below)
  --mlflow-tracking-token-secret S[:V] | --mlflow-tracking-username-secret S[:V]
      --mlflow-tracking-password-secret S[:V]
  --model-name N  --model-version V  --model-refresh-seconds N  --env KEY=VALUE (repeatable)
  --input-topic T [taxi-ride-streaming]  --output-topic T [ride-predictions]
  --output-subscription S [ride-predictions-sub]  --push-subscription S [FUNCTION-push]
  --dead-letter-topic T [FUNCTION-dead-letter]  --dead-letter-subscription S [TOPIC-sub]
  --dead-letter-retention D [31d]  --ack-deadline S  --min-retry-delay S  --max-retry-delay S
  --max-delivery-attempts N     [push-subscription.env]
  --service-account N [FUNCTION-fn]  --invoker-service-account N [FUNCTION-invoker]
  --build-service-account A     your own, prepared (docs/deploy.md) [deploy.sh's FUNCTION-build]
  --docker-repository N [FUNCTION-images]  --base-image I [python312]  --ingress internal|all
  --cpu N [1]  --memory M [1Gi]  --timeout S [60]  --concurrency N [$DEFAULT_CONCURRENCY]
  --expected-rate MSG_PER_S     the steady rate you expect: sets the four below (explicit flags
                                win; docs/deploy.md, "Billing and cost settings")
  --billing request|instance    [instance from $STEADY_RATE msg/s, else $DEFAULT_BILLING]  --max-instances N [10]
  --min-instances N [${MIN_INSTANCES_FOR_BILLING[instance]} instance-based, ${MIN_INSTANCES_FOR_BILLING[request]} request-based]
  --message-log-level L         [DEBUG (the line off) from $STEADY_RATE msg/s, else INFO]
  --request-log keep|exclude    Cloud Run's request log of this service [exclude from $STEADY_RATE msg/s]
Operations (docs/operations.md):
  --alert-email ADDRESS         the alerts' email channel [none: the alerts show in the console]
  --alert-backlog-age-seconds N [$DEFAULT_BACKLOG_AGE_SECONDS]  --alert-error-ratio R [$DEFAULT_ERROR_RATIO]
  --alert-no-predictions-seconds N [$DEFAULT_NO_PREDICTIONS_SECONDS]  --no-alerts (leave alert policies alone)
  --prediction-log|--no-prediction-log  every prediction kept in BigQuery [on]
  --prediction-log-dataset D [FUNCTION, dashes as _]  --keep-prediction-log (destroy: keep
                                the dataset and its history; by default it goes too)
  --cpu-boost|--no-cpu-boost [on]  --force (rebuild)  --verify|--no-verify (a run arming
  dead-lettering verifies anyway)  --verify-timeout S [600]  --log-limit N [50]
  --yes (destroy without asking)  --dry-run (print the commands; run-time values are
  UPPER_CASE placeholders)  -h|--help
Environment: DEPLOY_RETRY_ATTEMPTS [6], DEPLOY_RETRY_DELAY_SECONDS [15, doubling up to 120].
USAGE
}

# ------------------------------------------------------------------------------ running gcloud

log() { printf '%s\n' "$*" >&2; }
step() { log "==> $*"; }
ok() { log "    ok: $*"; }
die() { log "$SCRIPT_NAME: error: $*" && exit 1; }
is_dry_run() { [[ $DRY_RUN == 1 ]]; }

shell_quote() { # words a POSIX shell (and Python's shlex) reads back unchanged
  local word quoted=() squote="'\\''"
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then quoted+=("$word"); else quoted+=("'${word//\'/$squote}'"); fi
  done
  printf '%s\n' "${quoted[*]}"
}

# retry_pause ATTEMPT: sleeps and returns 0 if $WORK_DIR/stderr holds a propagation delay and
# attempts are left, else 1.
retry_pause() {
  local pattern matched="" delay=$DEPLOY_RETRY_DELAY_SECONDS i
  for pattern in "${TRANSIENT_ERRORS[@]}" ${RETRY_ALSO[@]+"${RETRY_ALSO[@]}"}; do
    grep -Eq -- "$pattern" "$WORK_DIR/stderr" && matched=$pattern && break
  done
  [[ -n $matched ]] || return 1
  for ((i = 1; i < $1 && delay < 120; i++)); do delay=$((delay * 2)); done
  local what="attempt $1 of $DEPLOY_RETRY_ATTEMPTS failed (a propagation delay: '$matched')"
  (($1 < DEPLOY_RETRY_ATTEMPTS)) || { log "      $what; giving up" && return 1; }
  log "      $what; retrying in $((delay > 120 ? 120 : delay))s" && sleep $((delay > 120 ? 120 : delay))
}

# run DESCRIPTION COMMAND...: a change (output to stderr; stdin is RUN_INPUT or nothing).
CHANGES=0
run() {
  local description=$1 attempt=1 status
  shift
  CHANGES=$((CHANGES + 1))
  is_dry_run && printf '%s%s\n' "${DRY_PREFIX:-}" "$(shell_quote "$@")" && return 0
  log "    + $description" && log "      \$ ${DRY_PREFIX:-}$(shell_quote "$@")"
  while true; do
    status=0
    { "$@" <"${RUN_INPUT:-/dev/null}" 2>&1 1>&3 3>&- | tee "$WORK_DIR/stderr" >&2 3>&-; } 3>&2 || status=$?
    ((status == 0)) && return 0
    retry_pause "$attempt" || die "'$description' failed (exit $status): $(shell_quote "$@")
Nothing after this step was changed. Fix the cause above and re-run; re-running is safe."
    attempt=$((attempt + 1))
  done
}

# query COMMAND...: a read; QUERY_OUT holds its output. 1 if the resource does not exist; any
# other error stops (no permission is not "absent"). Dry run: prints it, answers "absent".
query() {
  QUERY_OUT=""
  is_dry_run && shell_quote "$@" && return 1
  local attempt=1 status
  while true; do
    status=0
    QUERY_OUT=$("$@" </dev/null 2>"$WORK_DIR/stderr") || status=$?
    ((status == 0)) && return 0
    ! grep -q PERMISSION_DENIED "$WORK_DIR/stderr" &&
      grep -Eqi 'NOT_FOUND|not found|does not exist|status=\[404\]|Cannot find|matched no objects' "$WORK_DIR/stderr" &&
      return 1
    retry_pause "$attempt" || { cat "$WORK_DIR/stderr" >&2 && die "could not read the state: $(shell_quote "$@")"; }
    attempt=$((attempt + 1))
  done
}

# --------------------------------------------------------------------------------------- IAM

# iam_command VERB KIND NAME FLAG...: IAM_COMMAND is the IAM VERB on that resource. All but
# Pub/Sub take --condition=None: unattended, gcloud refuses to edit a policy holding conditional
# bindings without it (googlecloudsdk/command_lib/iam/iam_util.py). A table is bq's: its flags
# come before the table, and it prints the policy as JSON (frontend/commands_iam.py).
iam_command() {
  local verb=$1 kind=$2 name=$3 condition=(--condition=None)
  shift 3
  [[ $verb != get-iam-policy ]] || condition=()
  case $kind in
    project) IAM_COMMAND=(gcloud projects "$verb" "$name") ;;
    topic | subscription) IAM_COMMAND=(gcloud pubsub "${kind}s" "$verb" "$name" "${P[@]}") && condition=() ;;
    service-account) IAM_COMMAND=(gcloud iam service-accounts "$verb" "$name" "${P[@]}") ;;
    bucket) IAM_COMMAND=(gcloud storage buckets "$verb" "gs://$name" "${P[@]}") ;;
    repository) IAM_COMMAND=(gcloud artifacts repositories "$verb" "$name" --location="$REGION" "${P[@]}") ;;
    secret) IAM_COMMAND=(gcloud secrets "$verb" "$name" "${P[@]}") ;;
    service) IAM_COMMAND=(gcloud run services "$verb" "$name" --region="$REGION" "${P[@]}") ;;
    table) IAM_COMMAND=(bq "$verb" --project_id="$PROJECT" --table "$@" "$name") && return 0 ;;
  esac
  IAM_COMMAND+=(${condition[@]+"${condition[@]}"} "$@")
}

has_binding() { # KIND NAME ROLE MEMBER: granted without a condition (a missing resource: no)
  if [[ $1 == table ]]; then # bq's JSON: a binding with a condition holds a nested object
    iam_command get-iam-policy "$1" "$2" --format=json
    query "${IAM_COMMAND[@]}" && grep -o '{[^{}]*}' <<<"$QUERY_OUT" | grep -F "\"$3\"" | grep -Fq "\"$4\""
    return
  fi
  iam_command get-iam-policy "$1" "$2" --format="value(bindings.filter(\"role=$3 AND members=$4 AND -condition:*\").extract(role).flatten())"
  query "${IAM_COMMAND[@]}" && [[ -n $QUERY_OUT ]]
}

grant() { # KIND NAME ROLE MEMBER
  has_binding "$@" && ok "$4 has $3 on $1 $2" && return 0
  grep -Fxq "$1"$'\t'"$2"$'\t'"$3"$'\t'"$4" <<<"$LEDGER_BEFORE" && log "    drift: grant $3 on $1 $2 is gone"
  iam_command add-iam-policy-binding "$1" "$2" --member="$4" --role="$3"
  run "grant $3 on $1 $2 to $4" "${IAM_COMMAND[@]}"
  FRESH_GRANTS=1
}

revoke() { # KIND NAME ROLE MEMBER
  [[ $1 != table ]] || command -v bq >/dev/null || { log "    note: without bq, $4 keeps $3 on $2" && return 0; }
  has_binding "$@" || is_dry_run || return 0
  iam_command remove-iam-policy-binding "$1" "$2" --member="$4" --role="$3"
  run "revoke $3 on $1 $2 from $4" "${IAM_COMMAND[@]}"
}

# Every grant deploy.sh makes, as PHASE KIND NAME ROLE MEMBER (tab-separated); the phase says when.
plan_grants() {
  local pair
  GRANTS=()
  plan() { local IFS=$'\t' && GRANTS+=("$*"); }
  plan runtime topic "$OUTPUT_TOPIC" roles/pubsub.publisher "$FN_MEMBER"
  plan runtime topic "$DEAD_LETTER_TOPIC" roles/pubsub.publisher "$FN_MEMBER"
  # ride_predictor/telemetry.py's OTLP writes to the Telemetry API need telemetry.metrics.write,
  # which this role holds (https://cloud.google.com/iam/docs/roles-permissions/telemetry);
  # Monitoring's roles are granted on projects only.
  plan runtime project "$PROJECT" roles/monitoring.metricWriter "$FN_MEMBER"
  [[ -z $MODEL_BUCKET ]] || plan runtime bucket "$MODEL_BUCKET" roles/storage.objectViewer "$FN_MEMBER"
  for pair in ${SECRET_ENV[@]+"${SECRET_ENV[@]}"}; do
    pair=${pair#*=} && plan runtime secret "${pair%%:*}" roles/secretmanager.secretAccessor "$FN_MEMBER"
  done
  # The build, each on the narrowest resource that works (docs/deploy.md, "The build identity").
  plan build repository "$DOCKER_REPOSITORY" roles/artifactregistry.writer "$BUILD_MEMBER"
  plan build bucket "$SOURCES_BUCKET" roles/storage.objectViewer "$BUILD_MEMBER"
  ((BUILD_SA_MANAGED == 0)) || plan build project "$PROJECT" roles/logging.logWriter "$BUILD_MEMBER"
  # The Pub/Sub service agent signs the pushes as the invoker and forwards dead letters
  # (https://cloud.google.com/pubsub/docs/handling-failures, "Grant forwarding permissions").
  plan agent service-account "$INVOKER_EMAIL" roles/iam.serviceAccountTokenCreator "$AGENT_MEMBER"
  plan agent topic "$DEAD_LETTER_TOPIC" roles/pubsub.publisher "$AGENT_MEMBER"
  plan subscription subscription "$PUSH_SUBSCRIPTION" roles/pubsub.subscriber "$AGENT_MEMBER"
  plan service service "$FUNCTION_NAME" roles/run.invoker "$INVOKER_MEMBER"
  ((PREDICTION_LOG == 1)) || return 0
  # The agent writes the prediction log and forwards the rows it cannot write, on its table and
  # its own topics only (https://cloud.google.com/pubsub/docs/create-bigquery-subscription).
  plan table table "$PREDICTION_LOG_TABLE" roles/bigquery.dataEditor "$AGENT_MEMBER"
  plan agent topic "$PREDICTION_LOG_DEAD_LETTER" roles/pubsub.publisher "$AGENT_MEMBER"
  plan log subscription "$PREDICTION_LOG_SUBSCRIPTION" roles/pubsub.subscriber "$AGENT_MEMBER"
}

grant_phase() {
  local line phase kind name role member
  for line in "${GRANTS[@]}"; do
    IFS=$'\t' read -r phase kind name role member <<<"$line"
    [[ $phase != "$1" ]] || grant "$kind" "$name" "$role" "$member"
  done
}

# The ledger: the grants deploy.sh made (KIND NAME ROLE MEMBER lines), in LEDGER_URL. Written
# before the grants, so a failed run leaves a full record; destroy revokes from it alone, and a
# deploy revokes what it lists but no longer plans (another model bucket, a secret dropped).
ledger_read() {
  LEDGER=""
  if query gcloud storage cat "$LEDGER_URL" "${P[@]}"; then LEDGER=$QUERY_OUT; fi
}
planned() { printf '%s\n' "${GRANTS[@]}" | cut -f2-; }
ledger_write() { # LINES: stores them (sorted, unique) unless the ledger holds exactly those
  sed '/^$/d' <<<"$1" | sort -u >"$WORK_DIR/ledger"
  [[ $(cat "$WORK_DIR/ledger") != "$(sed '/^$/d' <<<"$LEDGER" | sort -u)" ]] || return 0
  RUN_INPUT=$WORK_DIR/ledger run "record the grants in $LEDGER_URL" gcloud storage cp - "$LEDGER_URL" "${P[@]}"
  LEDGER=$(cat "$WORK_DIR/ledger") CHANGES=$((CHANGES - 1)) # bookkeeping, not a change
}
revoke_unplanned() {
  local line kind name role member
  while IFS= read -r line; do
    if [[ -z $line ]] || grep -Fxq -- "$line" <<<"$(planned)"; then continue; fi
    IFS=$'\t' read -r kind name role member <<<"$line" && revoke "$kind" "$name" "$role" "$member"
  done <<<"$LEDGER"
  ledger_write "$(planned)"
}

# ----------------------------------------------------------------------------- configuration

# Flags only (a REGION or CPU in the caller's environment changes nothing): --input-topic sets
# INPUT_TOPIC, and so on; the secrets' flags set TOKEN_SECRET, USERNAME_SECRET, PASSWORD_SECRET.
VALUE_FLAGS=" --project --region --function-name --model-uri --model-bucket --model-name
  --model-version --model-refresh-seconds --mlflow-tracking-uri --mlflow-tracking-token-secret
  --mlflow-tracking-username-secret --mlflow-tracking-password-secret --input-topic
  --output-topic --output-subscription --push-subscription --dead-letter-topic
  --dead-letter-subscription --dead-letter-retention --ack-deadline --min-retry-delay
  --max-retry-delay --max-delivery-attempts --service-account --invoker-service-account
  --build-service-account --docker-repository --base-image --cpu --memory --concurrency --timeout
  --min-instances --max-instances --billing --ingress --verify-timeout --log-limit --expected-rate
  --message-log-level --alert-email --alert-backlog-age-seconds --alert-error-ratio
  --alert-no-predictions-seconds --prediction-log-dataset --request-log "
variable_of() {
  local name=${1#--}
  [[ $name != *-secret ]] || name=${name#mlflow-tracking-}
  printf '%s' "${name//-/_}" | tr '[:lower:]' '[:upper:]'
}
for flag in $VALUE_FLAGS; do unset "$(variable_of "$flag")"; done
COMMAND=deploy DRY_RUN=0 ASSUME_YES=0 FORCE=0 VERIFY=auto ALLOW_PICKLE="" CPU_BOOST=true EXTRA_ENV=()
PREDICTION_LOG=1 ALERTS=1 KEEP_PREDICTION_LOG=0
while (($# > 0)); do
  [[ $1 != --*=* ]] || set -- "${1%%=*}" "${1#*=}" "${@:2}"
  case $1 in
    deploy | verify | logs | destroy) COMMAND=$1 ;;
    -h | --help) usage && exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --yes | -y) ASSUME_YES=1 ;;
    --force) FORCE=1 ;;
    --verify) VERIFY=yes ;;
    --no-verify) VERIFY=no ;;
    --cpu-boost) CPU_BOOST=true ;;
    --no-cpu-boost) CPU_BOOST=false ;;
    --allow-pickle) ALLOW_PICKLE=true ;;
    --no-allow-pickle) ALLOW_PICKLE=false ;;
    --prediction-log) PREDICTION_LOG=1 ;;
    --no-prediction-log) PREDICTION_LOG=0 ;;
    --keep-prediction-log) KEEP_PREDICTION_LOG=1 ;;
    --no-alerts) ALERTS=0 ;;
    --*)
      [[ $1 == --env || $VALUE_FLAGS == *" $1"[[:space:]]* ]] || die "unknown option '$1' (see --help)"
      # A value that looks like an option (`--input-topic --help`) is a mistake, not a name.
      [[ $# -ge 2 && -n $2 && $2 != -* ]] || die "$1 needs a value (see --help)"
      if [[ $1 == --env ]]; then EXTRA_ENV+=("$2"); else printf -v "$(variable_of "$1")" '%s' "$2"; fi
      shift
      ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

command -v gcloud >/dev/null || die "gcloud is not on PATH: install the Google Cloud CLI first"
[[ -n ${PROJECT:-} ]] || PROJECT=$(gcloud config get-value project 2>/dev/null </dev/null || true)
[[ -n $PROJECT ]] || die "no project: pass --project ID"
while IFS='=' read -r key value; do # Stream A's push subscription defaults (KEY=VALUE)
  [[ -z $key || $key == \#* ]] && continue
  [[ $key =~ ^(ACK_DEADLINE|MIN_RETRY_DELAY|MAX_RETRY_DELAY)_SECONDS$|^MAX_DELIVERY_ATTEMPTS$ && $value =~ ^[0-9]+$ ]] ||
    die "$PUSH_SETTINGS_FILE: '$key=$value' is not one of its settings with a whole number"
  printf -v "FILE_$key" '%s' "$value"
done <"$PUSH_SETTINGS_FILE"
: "${REGION:=us-central1}" "${FUNCTION_NAME:=ride-prediction}" "${MODEL_URI:=}" "${MODEL_BUCKET:=}"
: "${MODEL_NAME:=ride_duration_prediction_model}" "${MODEL_VERSION:=}" "${MODEL_REFRESH_SECONDS:=}"
: "${MLFLOW_TRACKING_URI:=}" "${TOKEN_SECRET:=}" "${USERNAME_SECRET:=}" "${PASSWORD_SECRET:=}"
: "${INPUT_TOPIC:=taxi-ride-streaming}" "${OUTPUT_TOPIC:=ride-predictions}" "${OUTPUT_SUBSCRIPTION:=ride-predictions-sub}"
: "${PUSH_SUBSCRIPTION:=$FUNCTION_NAME-push}" "${DEAD_LETTER_TOPIC:=$FUNCTION_NAME-dead-letter}"
: "${DEAD_LETTER_SUBSCRIPTION:=$DEAD_LETTER_TOPIC-sub}" "${DEAD_LETTER_RETENTION:=31d}"
: "${MAX_DELIVERY_ATTEMPTS:=$FILE_MAX_DELIVERY_ATTEMPTS}" "${MIN_RETRY_DELAY:=$FILE_MIN_RETRY_DELAY_SECONDS}"
: "${MAX_RETRY_DELAY:=$FILE_MAX_RETRY_DELAY_SECONDS}" "${SERVICE_ACCOUNT:=$FUNCTION_NAME-fn}"
: "${INVOKER_SERVICE_ACCOUNT:=$FUNCTION_NAME-invoker}" "${BUILD_SERVICE_ACCOUNT:=}" "${BASE_IMAGE:=python312}"
: "${DOCKER_REPOSITORY:=$FUNCTION_NAME-images}" "${CPU:=1}" "${MEMORY:=1Gi}" "${TIMEOUT:=60}"
: "${CONCURRENCY:=$DEFAULT_CONCURRENCY}" "${MAX_INSTANCES:=10}" "${EXPECTED_RATE:=}" "${MESSAGE_LOG_LEVEL:=}"
: "${INGRESS:=internal}" "${VERIFY_TIMEOUT:=600}" "${LOG_LIMIT:=50}" "${ALERT_EMAIL:=}"
: "${ALERT_BACKLOG_AGE_SECONDS:=$DEFAULT_BACKLOG_AGE_SECONDS}" "${ALERT_ERROR_RATIO:=$DEFAULT_ERROR_RATIO}"
: "${ALERT_NO_PREDICTIONS_SECONDS:=$DEFAULT_NO_PREDICTIONS_SECONDS}" "${PREDICTION_LOG_DATASET:=${FUNCTION_NAME//-/_}}"
: "${DEPLOY_RETRY_ATTEMPTS:=6}" "${DEPLOY_RETRY_DELAY_SECONDS:=15}" "${DEPLOY_VERIFY_POLL_SECONDS:=5}"

# --------------------------------------------------------------------------------- validation

check() { [[ $2 =~ $3 ]] || die "$1 '$2' is not valid: $4"; } # WHAT VALUE REGEX RULE
no_userinfo() {
  [[ ! $2 =~ ^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@ ]] || die "$1 holds credentials (user:password@host): keep
  them in Secret Manager and pass --mlflow-tracking-token-secret, or the -username- and -password-secret"
}
SA_RULE='^[a-z][-a-z0-9]{4,28}[a-z0-9]$'
check project "$PROJECT" '^([a-z][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$' "6-30 characters: a-z, 0-9, -"
check region "$REGION" '^[a-z]+-[a-z]+[0-9]+$' "a region such as europe-west1"
check "function name" "$FUNCTION_NAME" '^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$' "1-49 characters: a-z, 0-9, -"
for name in INPUT_TOPIC OUTPUT_TOPIC DEAD_LETTER_TOPIC OUTPUT_SUBSCRIPTION DEAD_LETTER_SUBSCRIPTION PUSH_SUBSCRIPTION; do
  check "$name" "${!name}" '^[A-Za-z][-A-Za-z0-9._~+%]{2,254}$' "3-255 of a-z A-Z 0-9 - _ . ~ + %, from a letter"
  [[ ${!name} != goog* ]] || die "$name '${!name}' is not valid: it may not start with goog"
done
check "service account" "$SERVICE_ACCOUNT" "$SA_RULE" "6-30 characters: a-z, 0-9, - (--service-account)"
check "service account" "$INVOKER_SERVICE_ACCOUNT" "$SA_RULE" "6-30 characters (--invoker-service-account)"
[[ -n $BUILD_SERVICE_ACCOUNT ]] || check "service account" "$FUNCTION_NAME-build" "$SA_RULE" "(--build-service-account)"
check repository "$DOCKER_REPOSITORY" '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$' "a-z, 0-9, -"
check bucket "${MODEL_BUCKET#gs://}" '^$|^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$' "a bucket name"
check "base image" "$BASE_IMAGE" '^[a-z0-9][-a-z0-9./:@_]*$' "e.g. python312"
for name in TOKEN_SECRET USERNAME_SECRET PASSWORD_SECRET; do
  check secret "${!name}" '^$|^[A-Za-z0-9_-]{1,255}(:([1-9][0-9]*|latest))?$' "SECRET or SECRET:VERSION"
done
TIMEOUT=${TIMEOUT%s}
# The rate you state picks what no flag says (docs/cost.md, "How to choose"); explicit flags win.
check "expected rate" "$EXPECTED_RATE" '^$|^[0-9]+(\.[0-9]+)?$' "messages a second, e.g. 0.5 or 200"
RATE_CLASS=below
[[ -z $EXPECTED_RATE ]] || ((10#${EXPECTED_RATE%%.*} < STEADY_RATE)) || RATE_CLASS=steady
[[ -n ${BILLING:-} ]] || BILLING=$([[ $RATE_CLASS == steady ]] && echo instance || echo "$DEFAULT_BILLING")
[[ $BILLING =~ ^(request|instance)$ ]] || die "--billing must be request or instance"
: "${MIN_INSTANCES:=${MIN_INSTANCES_FOR_BILLING[$BILLING]}}" "${MESSAGE_LOG_LEVEL:=${MESSAGE_LOG_FOR_RATE[$RATE_CLASS]}}"
: "${REQUEST_LOG:=${REQUEST_LOG_FOR_RATE[$RATE_CLASS]}}"
[[ $REQUEST_LOG =~ ^(keep|exclude)$ ]] || die "--request-log must be keep or exclude"
MESSAGE_LOG_LEVEL=${MESSAGE_LOG_LEVEL^^}
check "message log level" "$MESSAGE_LOG_LEVEL" '^(DEBUG|INFO|WARNING|ERROR)$' "DEBUG, INFO, WARNING or ERROR"
# The alerts: an address render.bash takes (no quote, backslash or space); a metric-absence
# condition lasts 120 s to 23.5 h in whole minutes (https://cloud.google.com/monitoring/alerts/metric-absence).
check "alert email" "$ALERT_EMAIL" '^$|^[^][@[:space:]"\\(),:;<>]+@[-A-Za-z0-9]+(\.[-A-Za-z0-9]+)+$' "an email address"
check "--alert-backlog-age-seconds" "$ALERT_BACKLOG_AGE_SECONDS" '^[1-9][0-9]{0,5}$' "1 to 999999 seconds"
check "--alert-error-ratio" "$ALERT_ERROR_RATIO" '^0?\.[0-9]*[1-9][0-9]*$' "a fraction between 0 and 1, e.g. 0.05"
check "--alert-no-predictions-seconds" "$ALERT_NO_PREDICTIONS_SECONDS" '^[1-9][0-9]*$' "whole minutes in seconds"
((ALERT_NO_PREDICTIONS_SECONDS >= 120 && ALERT_NO_PREDICTIONS_SECONDS <= 84600 && ALERT_NO_PREDICTIONS_SECONDS % 60 == 0)) ||
  die "--alert-no-predictions-seconds must be whole minutes from 120 to 84600 (23.5 h)"
check "--prediction-log-dataset" "$PREDICTION_LOG_DATASET" '^[A-Za-z0-9_]{1,1024}$' "letters, digits and _"
for name in MAX_INSTANCES MIN_INSTANCES CONCURRENCY MAX_DELIVERY_ATTEMPTS MIN_RETRY_DELAY MAX_RETRY_DELAY \
  TIMEOUT VERIFY_TIMEOUT LOG_LIMIT DEPLOY_RETRY_ATTEMPTS DEPLOY_RETRY_DELAY_SECONDS DEPLOY_VERIFY_POLL_SECONDS; do
  check "$name" "${!name}" '^[0-9]+$' "a whole number"
done
check MODEL_REFRESH_SECONDS "$MODEL_REFRESH_SECONDS" '^[0-9]*$' "a whole number"
# Pub/Sub's limits (https://cloud.google.com/pubsub/docs/subscription-properties): a push waits at
# most 600 s for its answer, 5-100 delivery attempts, delays up to 600 s, retention 10m to 31d.
((TIMEOUT >= 1 && TIMEOUT <= 600)) || die "--timeout must be 1 to 600 seconds (a push waits 600 s at most)"
: "${ACK_DEADLINE:=$((TIMEOUT > FILE_ACK_DEADLINE_SECONDS ? TIMEOUT : FILE_ACK_DEADLINE_SECONDS))}"
check "ack deadline" "$ACK_DEADLINE" '^[0-9]+$' "a whole number"
((ACK_DEADLINE >= TIMEOUT && ACK_DEADLINE >= 10 && ACK_DEADLINE <= 600)) ||
  die "--ack-deadline must be 10-600 seconds and at least --timeout ($TIMEOUT)"
((MAX_DELIVERY_ATTEMPTS >= 5 && MAX_DELIVERY_ATTEMPTS <= 100)) || die "--max-delivery-attempts must be 5 to 100"
((MIN_RETRY_DELAY <= MAX_RETRY_DELAY && MAX_RETRY_DELAY <= 600)) || die "retry delays must be min <= max <= 600"
declare -A UNIT=([m]=60 [h]=3600 [d]=86400)
[[ $DEAD_LETTER_RETENTION =~ ^([0-9]+)([mhd])$ ]] || die "--dead-letter-retention must be like 7d, 12h or 30m"
RETENTION_SECONDS=$((BASH_REMATCH[1] * UNIT[${BASH_REMATCH[2]}]))
((RETENTION_SECONDS >= 600 && RETENTION_SECONDS <= 2678400)) || die "--dead-letter-retention must be 10m to 31d"
((MIN_INSTANCES <= MAX_INSTANCES)) || die "--min-instances is above --max-instances"
[[ $INGRESS =~ ^(internal|all)$ ]] || die "--ingress must be internal or all"
check memory "$MEMORY" '^[1-9][0-9]*(Mi|Gi)$' "e.g. 512Mi or 2Gi"
# Below 1 vCPU: concurrency 1 and request billing; above: whole vCPUs
# (https://cloud.google.com/run/docs/configuring/services/cpu).
check cpu "$CPU" '^(0\.[0-9]*[1-9]|[1-8])$' "0.08 to 1 in fractions, or 1 to 8"
[[ $CPU != 0.* ]] || ((CONCURRENCY == 1)) && [[ $CPU != 0.* || $BILLING == request ]] ||
  die "--cpu below 1 needs --concurrency 1 and --billing request"
((CONCURRENCY >= 1 && CONCURRENCY <= 1000)) || die "--concurrency must be 1 to 1000"
[[ $MODEL_URI =~ ^$|^[a-zA-Z][a-zA-Z0-9+.-]*:/ ]] || die "--model-uri '$MODEL_URI' is not a URI the cloud can reach (gs://, models:/ ...)"
no_userinfo --model-uri "$MODEL_URI" && no_userinfo --mlflow-tracking-uri "$MLFLOW_TRACKING_URI"
for pair in ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}; do
  [[ $pair =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$pair'"
  name=${pair%%=*} && [[ ! $name =~ ^MLFLOW_TRACKING_(TOKEN|USERNAME|PASSWORD)$ ]] || die "$name must not be a plain
  environment value: keep it in Secret Manager and pass --mlflow-tracking-${BASH_REMATCH[1],,}-secret"
  [[ " MODEL_URI PROJECT_ID PUBLISH_STREAM DEAD_LETTER_STREAM MODEL_NAME THREADS SOURCE_SUBSCRIPTION MODEL_VERSION
    PUBLISH_MAX_RPCS_IN_FLIGHT MLFLOW_ALLOW_PICKLE_DESERIALIZATION MODEL_REFRESH_SECONDS MLFLOW_TRACKING_URI
    MESSAGE_LOG_LEVEL " != *[[:space:]]${name}[[:space:]]* ]] ||
    die "$name is set by deploy.sh from its own flags (see --help)"
done
[[ -z $TOKEN_SECRET || -z $USERNAME_SECRET$PASSWORD_SECRET ]] || die "MLflow takes a token or a username and password, not both"
[[ -z $USERNAME_SECRET$PASSWORD_SECRET || (-n $USERNAME_SECRET && -n $PASSWORD_SECRET) ]] || die "the username and password secrets go together"

P=(--project="$PROJECT")
FN_EMAIL="$SERVICE_ACCOUNT@$PROJECT.iam.gserviceaccount.com" FN_MEMBER="serviceAccount:$SERVICE_ACCOUNT@$PROJECT.iam.gserviceaccount.com"
INVOKER_EMAIL="$INVOKER_SERVICE_ACCOUNT@$PROJECT.iam.gserviceaccount.com" && INVOKER_MEMBER="serviceAccount:$INVOKER_EMAIL"
BUILD_SA_MANAGED=0 BUILD_EMAIL=$BUILD_SERVICE_ACCOUNT
[[ -n $BUILD_EMAIL ]] || BUILD_SA_MANAGED=1 BUILD_EMAIL=$FUNCTION_NAME-build
[[ $BUILD_EMAIL == *@* ]] || BUILD_EMAIL="$BUILD_EMAIL@$PROJECT.iam.gserviceaccount.com"
BUILD_MEMBER="serviceAccount:$BUILD_EMAIL"
LABELS="$MANAGED_MARK,deploy-sh-function=$FUNCTION_NAME"
SA_MARK="$MANAGED_MARK deploy-sh-function=$FUNCTION_NAME" # in the service accounts' descriptions
PUSH_PATH="projects/$PROJECT/subscriptions/$PUSH_SUBSCRIPTION"
# The bucket `gcloud run deploy --source` uploads to (googlecloudsdk/command_lib/run/sourcedeploys/
# sources.py). deploy.sh makes it, so the build may read that bucket and no other.
SAFE_PROJECT=${PROJECT//[:.]/_}
SOURCES_BUCKET="run-sources-${SAFE_PROJECT//google/elgoog}-$REGION"
LEDGER_URL="gs://$SOURCES_BUCKET/deploy-sh/$FUNCTION_NAME/grants.tsv"
SECRET_ENV=() # ENV=SECRET:VERSION, MLflow's own variables (version default: latest)
[[ -z $TOKEN_SECRET ]] || SECRET_ENV+=("MLFLOW_TRACKING_TOKEN=$TOKEN_SECRET")
[[ -z $USERNAME_SECRET ]] || SECRET_ENV+=("MLFLOW_TRACKING_USERNAME=$USERNAME_SECRET" "MLFLOW_TRACKING_PASSWORD=$PASSWORD_SECRET")
for i in "${!SECRET_ENV[@]}"; do [[ ${SECRET_ENV[i]#*=} == *:* ]] || SECRET_ENV[i]+=:latest; done
MODEL_BUCKET=${MODEL_BUCKET#gs://}
[[ -n $MODEL_BUCKET || $MODEL_URI != gs://* ]] || MODEL_BUCKET=${MODEL_URI#gs://} MODEL_BUCKET=${MODEL_BUCKET%%/*}

# The prediction log (docs/operations.md): a BigQuery subscription on Stream B writes every
# prediction but verify's into DATASET.predictions; rows it cannot write go to its own dead letters.
PREDICTION_LOG_SUBSCRIPTION="$FUNCTION_NAME-prediction-log" PREDICTION_LOG_FILTER='NOT attributes:deploy_verify'
PREDICTION_LOG_DEAD_LETTER="$FUNCTION_NAME-prediction-log-dead-letter"
PREDICTION_LOG_TABLE="$PROJECT:$PREDICTION_LOG_DATASET.predictions"
OURS_FILTER="userLabels.managed_by=\"ride-prediction-deploy\" AND userLabels.service=\"$FUNCTION_NAME\"" # monitoring/'s labels
POLICIES=(gcloud alpha monitoring policies) CHANNELS=(gcloud beta monitoring channels) BETA=beta # check_components

WORK_DIR=$(mktemp -d)
VERIFY_SUBSCRIPTIONS=() LEDGER="" LEDGER_BEFORE="" FRESH_GRANTS=0
cleanup() { # verify's subscriptions, if it did not get to delete them (they expire within a day)
  is_dry_run || for sub in ${VERIFY_SUBSCRIPTIONS[@]+"${VERIFY_SUBSCRIPTIONS[@]}"}; do
    gcloud pubsub subscriptions delete "$sub" "${P[@]}" --quiet </dev/null >/dev/null 2>&1 || true
  done
  rm -rf "$WORK_DIR"
}
trap cleanup EXIT
cd "$SCRIPT_DIR" # --source=. and the runtime files are relative to the repository

# ---------------------------------------------------------------------------------- resources

ensure_apis_and_project() {
  local api missing=()
  query gcloud services list --enabled "${P[@]}" --format='value(config.name)' || true
  ENABLED_APIS=$QUERY_OUT
  for api in "${REQUIRED_APIS[@]}" ${SECRET_ENV[@]+secretmanager.googleapis.com} \
    $( ((PREDICTION_LOG == 0)) || echo bigquery.googleapis.com); do
    grep -Fxq "$api" <<<"$ENABLED_APIS" || missing+=("$api")
  done
  ((${#missing[@]} == 0)) || run "enable ${missing[*]}" gcloud services enable "${missing[@]}" "${P[@]}"
  query gcloud projects describe "$PROJECT" --format='value(projectNumber)' || is_dry_run || die "no project $PROJECT"
  AGENT_MEMBER="serviceAccount:service-${QUERY_OUT:-PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

ensure_sources_bucket() { # as gcloud would make it (uniform access), public access prevented
  query gcloud storage buckets describe "gs://$SOURCES_BUCKET" "${P[@]}" --format='value(name)' && ok "gs://$SOURCES_BUCKET exists" && return 0
  run "create the sources bucket" gcloud storage buckets create "gs://$SOURCES_BUCKET" --location="$REGION" \
    --uniform-bucket-level-access --public-access-prevention "${P[@]}"
  run "label the sources bucket" gcloud storage buckets update "gs://$SOURCES_BUCKET" --update-labels="$MANAGED_MARK" "${P[@]}"
}

ensure_topic() {
  query gcloud pubsub topics describe "$1" "${P[@]}" --format='value(name)' && ok "topic $1 exists" && return 0
  run "create topic $1" gcloud pubsub topics create "$1" --labels="$LABELS" "${P[@]}"
}

# ensure_pull_subscription NAME TOPIC [RETENTION]: never expires (by default Pub/Sub deletes a
# subscription idle for 31 days, and what it would have kept is lost); keeps RETENTION if given.
ensure_pull_subscription() {
  local settings=(--expiration-period=never ${3:+--message-retention-duration=$3})
  if query gcloud pubsub subscriptions describe "$1" "${P[@]}" --format='value[separator="|"](topic,expirationPolicy.ttl,messageRetentionDuration)'; then
    [[ ${QUERY_OUT%%|*} == "projects/$PROJECT/topics/$2" ]] || die "subscription $1 is on ${QUERY_OUT%%|*}, not $2: choose another name"
    [[ $QUERY_OUT == *"||"* && (-z ${3:-} || $QUERY_OUT == *"|${RETENTION_SECONDS}s") ]] && ok "subscription $1 never expires" && return 0
    log "    drift: subscription $1: expiry, retention: ${QUERY_OUT#*|}"
    run "subscription $1: never expire${3:+, keep $3}" gcloud pubsub subscriptions update "$1" "${settings[@]}" "${P[@]}"
  else
    run "create subscription $1 on $2" gcloud pubsub subscriptions create "$1" --topic="$2" "${settings[@]}" --labels="$LABELS" "${P[@]}"
  fi
}

ensure_service_account() { # NAME EMAIL PURPOSE
  query gcloud iam service-accounts describe "$2" "${P[@]}" --format='value(email)' && ok "$2 exists" && return 0
  run "create service account $1" gcloud iam service-accounts create "$1" --display-name="$FUNCTION_NAME $3" \
    --description="$3 of $FUNCTION_NAME; $SA_MARK" "${P[@]}"
}

# The images' repository is deploy.sh's own, so the build's writer grant is on it alone (without
# --image, gcloud would make `cloud-run-source-deploy`); its cleanup policy keeps it small
# (https://cloud.google.com/artifact-registry/docs/repositories/cleanup-policy).
ensure_repository() {
  local cleanup=(gcloud artifacts repositories set-cleanup-policies "$DOCKER_REPOSITORY" --location="$REGION"
    --policy="$CLEANUP_POLICY_FILE" --no-dry-run "${P[@]}")
  if query gcloud artifacts repositories describe "$DOCKER_REPOSITORY" --location="$REGION" "${P[@]}" \
    --format='value[separator="|"](cleanupPolicies.keep-recent.mostRecentVersions.keepCount,cleanupPolicies.delete-old.condition.olderThan,cleanupPolicyDryRun)'; then
    [[ ${QUERY_OUT%|*} == "$CLEANUP_POLICY_STATE" && ${QUERY_OUT##*|} != True ]] && ok "repository $DOCKER_REPOSITORY" && return 0
  else
    run "create image repository $DOCKER_REPOSITORY" gcloud artifacts repositories create "$DOCKER_REPOSITORY" \
      --repository-format=docker --location="$REGION" --labels="$LABELS" "${P[@]}"
  fi
  run "cleanup policy of repository $DOCKER_REPOSITORY" "${cleanup[@]}"
}

check_secrets_and_build_account() {
  local pair
  for pair in ${SECRET_ENV[@]+"${SECRET_ENV[@]}"}; do
    pair=${pair#*=} && pair=${pair%%:*}
    query gcloud secrets describe "$pair" "${P[@]}" --format='value(name)' || is_dry_run || die "secret $pair does not
  exist in project $PROJECT; create it with: printf %s \"\$VALUE\" | gcloud secrets create $pair --data-file=- --project=$PROJECT"
  done
  ((BUILD_SA_MANAGED == 1)) || query gcloud iam service-accounts describe "$BUILD_EMAIL" "${P[@]}" \
    --format='value(email)' || is_dry_run || die "build service account $BUILD_EMAIL not found"
}

# MLflow refuses to deserialize a model when MLFLOW_ALLOW_PICKLE_DESERIALIZATION is false (its
# default: true). MLflow 3.17 gates every format of the sklearn flavour behind it, skops too (its
# allow-list of types is read from the model itself: mlflow/sklearn/__init__.py,
# _load_model_from_local_file), and a pickled pyfunc python_model. For a gs:// model the function
# gets what its MLmodel needs: true for those, and then whoever can write that bucket can run code
# in the function (docs/models.md); false for any other model, so a pickle slipped in later is
# refused. A registry alias can move to any model later: the user decides (cmd_deploy).
pickle_setting() {
  [[ -z $ALLOW_PICKLE ]] || return 0
  if query gcloud storage cat "${MODEL_URI%/}/MLmodel" "${P[@]}"; then
    ALLOW_PICKLE=false
    grep -Eq '^\s*(sklearn:|python_model:)' <<<"$QUERY_OUT" || return 0
    ALLOW_PICKLE=true && log "    note: a scikit-learn or pickled model: whoever can write gs://$MODEL_BUCKET can run code in the function"
  else
    is_dry_run || die "no MLflow model at $MODEL_URI (its MLmodel is missing)"
    ALLOW_PICKLE=FROM_MLMODEL
  fi
}

# -------------------------------------------------------------------------------- the service

sha256() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi; }
cpu_millis() { # 1 -> 1000, 0.5 -> 500, 1000m -> 1000
  local fraction=${1#*.}000
  if [[ $1 == *m ]]; then echo "${1%m}"; elif [[ $1 == *.* ]]; then echo $((10#${1%%.*} * 1000 + 10#${fraction:0:3})); else echo $(($1 * 1000)); fi
}
mebibytes() { if [[ $1 == *Gi ]]; then echo $((${1%Gi} * 1024)); else echo "${1%Mi}"; fi; }

# DESIRED: the service's settings, normalized as read_service normalizes the live ones; the
# environment is docs/design.md's "Configuration".
declare -A DESIRED=() LIVE=()
plan_service() {
  IMAGE="$REGION-docker.pkg.dev/$PROJECT/$DOCKER_REPOSITORY/$FUNCTION_NAME"
  local env=("MODEL_URI=$MODEL_URI" "PROJECT_ID=$PROJECT" "PUBLISH_STREAM=$OUTPUT_TOPIC"
    "DEAD_LETTER_STREAM=$DEAD_LETTER_TOPIC" "MODEL_NAME=$MODEL_NAME"
    "THREADS=$CONCURRENCY" # functions-framework's gunicorn threads: one per concurrent request
    "PUBLISH_MAX_RPCS_IN_FLIGHT=${PUBLISH_RPCS_FOR_BILLING[$BILLING]}" "MESSAGE_LOG_LEVEL=$MESSAGE_LOG_LEVEL"
    # functions-framework's conversion of a raw push drops its `subscription`: dead letters'
    # dlq_source_subscription comes from here.
    "SOURCE_SUBSCRIPTION=$PUSH_PATH" "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=$ALLOW_PICKLE"
    ${MODEL_VERSION:+"MODEL_VERSION=$MODEL_VERSION"} ${MLFLOW_TRACKING_URI:+"MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI"}
    ${MODEL_REFRESH_SECONDS:+"MODEL_REFRESH_SECONDS=$MODEL_REFRESH_SECONDS"} ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"})
  local source pair delimiter joined throttle=--cpu-throttling boost=--cpu-boost secrets=--clear-secrets
  source=$({
    for pair in "${RUNTIME_FILES[@]}"; do printf '%s\0' "$pair" && cat "$pair" && printf '\0'; done
    printf '%s\0' "$BASE_IMAGE" "$ENTRY_POINT" "$BUILD_EMAIL" "$IMAGE"
  } | sha256 | cut -c1-40)
  DESIRED=([service-account]=$FN_EMAIL [cpu]=$(cpu_millis "$CPU") [memory]=$(mebibytes "$MEMORY")
    [concurrency]=$CONCURRENCY [timeout]=$TIMEOUT [min-instances]=$MIN_INSTANCES [max-instances]=$MAX_INSTANCES
    [cpu-boost]=$CPU_BOOST [ingress]=$INGRESS [cpu-throttling]=$([[ $BILLING == request ]] && echo true || echo false)
    [label:managed-by]=deploy-sh [label:deploy-sh-function]=$FUNCTION_NAME [label:deploy-sh-source]=$source)
  for pair in "${env[@]}"; do
    [[ $pair != *$'\n'* ]] || die "environment values cannot hold newlines: ${pair%%=*}"
    DESIRED[env:${pair%%=*}]=${pair#*=}
  done
  for pair in ${SECRET_ENV[@]+"${SECRET_ENV[@]}"}; do DESIRED[secret:${pair%%=*}]=${pair#*=}; done
  # One --set-env-vars value, with a delimiter no value holds (`gcloud topic escaping`).
  for delimiter in '|' ';' '#' '!' '~~' ''; do
    [[ -n $delimiter ]] || die "the environment values use every delimiter deploy.sh knows; simplify them"
    [[ "${env[*]}" != *"$delimiter"* ]] && joined=$(IFS=$'\n' && echo "${env[*]}") && break
  done
  [[ $BILLING == request ]] || throttle=--no-cpu-throttling
  [[ $CPU_BOOST == true ]] || boost=--no-cpu-boost
  ((${#SECRET_ENV[@]} == 0)) || secrets=--set-secrets=$(IFS=, && echo "${SECRET_ENV[*]}")
  SETTINGS_FLAGS=(--service-account="$FN_EMAIL" --cpu="$CPU" --memory="$MEMORY" --concurrency="$CONCURRENCY"
    --timeout="$TIMEOUT" --min-instances="$MIN_INSTANCES" --max-instances="$MAX_INSTANCES" --ingress="$INGRESS"
    "$throttle" "$boost" "--set-env-vars=^$delimiter^${joined//$'\n'/$delimiter}" "$secrets"
    --update-labels="$LABELS,deploy-sh-source=$source")
}

# read_service: LIVE holds the service's settings, SERVICE_URL its URL; 1 if there is no service.
# Unset annotations read as gcloud's and Cloud Run's defaults.
read_service() {
  LIVE=() SERVICE_URL=""
  query gcloud run services describe "$FUNCTION_NAME" --region="$REGION" "${P[@]}" --format='flattened(metadata,spec,status)' || return 1
  local line key value i names=() values=() secrets=() versions=() annotations=spec.template.metadata.annotations
  LIVE=([min-instances]=0 [cpu-throttling]=true [cpu-boost]=false [ingress]=all)
  while IFS= read -r line; do
    key=${line%%:*} value=${line#*:} && value=${value#"${value%%[! ]*}"} && i=${key#*env\[} && i=${i%%\]*}
    case $key in
      status.url) SERVICE_URL=$value ;;
      metadata.labels.managed-by | metadata.labels.deploy-sh-*) LIVE[label:${key#metadata.labels.}]=$value ;;
      metadata.annotations.run.googleapis.com/ingress) LIVE[ingress]=$value ;;
      "$annotations".autoscaling.knative.dev/minScale) LIVE[min-instances]=$value ;;
      "$annotations".autoscaling.knative.dev/maxScale) LIVE[max-instances]=$value ;;
      "$annotations".run.googleapis.com/cpu-throttling) LIVE[cpu-throttling]=${value,,} ;;
      "$annotations".run.googleapis.com/startup-cpu-boost) LIVE[cpu-boost]=${value,,} ;;
      spec.template.spec.serviceAccountName) LIVE[service-account]=$value ;;
      spec.template.spec.containerConcurrency) LIVE[concurrency]=$value ;;
      spec.template.spec.timeoutSeconds) LIVE[timeout]=$value ;;
      *.containers\[0\].resources.limits.cpu) LIVE[cpu]=$(cpu_millis "$value") ;;
      *.containers\[0\].resources.limits.memory) LIVE[memory]=$(mebibytes "$value") ;;
      *.containers\[0\].env\[*\].name) names[i]=$value ;;
      *.containers\[0\].env\[*\].value) values[i]=$value ;;
      *.containers\[0\].env\[*\].valueFrom.secretKeyRef.name) secrets[i]=$value ;;
      *.containers\[0\].env\[*\].valueFrom.secretKeyRef.key) versions[i]=$value ;;
    esac
  done <<<"$QUERY_OUT"
  for i in "${!names[@]}"; do
    if [[ -n ${secrets[i]:-} ]]; then LIVE[secret:${names[i]}]=${secrets[i]}:${versions[i]:-latest}; else LIVE[env:${names[i]}]=${values[i]:-}; fi
  done
}

# The function as a Cloud Run function (https://cloud.google.com/run/docs/deploy-functions; flags
# checked in gcloud's surface/run/deploy.py): a new service, a source change or --force is a
# deploy, which builds; any other difference is `run services update`, which does not.
ensure_service() {
  plan_service
  local drift="" key exists=0
  if read_service; then
    exists=1
    for key in $(printf '%s\n' "${!DESIRED[@]}" "${!LIVE[@]}" | sort -u); do
      [[ ${LIVE[$key]-<unset>} == "${DESIRED[$key]-<unset>}" ]] || drift+="    drift: $key: ${LIVE[$key]-<unset>} -> ${DESIRED[$key]-<unset>}"$'\n'
    done
    [[ -n $drift || $FORCE == 1 ]] || { ok "service $FUNCTION_NAME has this source and every setting" && return 0; }
    log "${drift%$'\n'}"
  fi
  if ((exists == 0)) || [[ $FORCE == 1 || $drift == *label:deploy-sh-source* ]]; then
    # What gcloud would really upload after .gcloudignore (local; reads no cloud).
    query gcloud meta list-files-for-upload . || is_dry_run || die "gcloud cannot list the files to upload"
    [[ $(sort <<<"$QUERY_OUT") == "$(printf '%s\n' "${RUNTIME_FILES[@]}" | sort)" ]] || is_dry_run ||
      die "refusing to deploy: .gcloudignore would upload $(tr '\n' ' ' <<<"$QUERY_OUT")instead of ${RUNTIME_FILES[*]}"
    ((FRESH_GRANTS == 0)) || RETRY_ALSO=("${FRESH_GRANT_ERRORS[@]}")
    run "deploy the function (building takes a few minutes)" gcloud run deploy "$FUNCTION_NAME" --source=. \
      --function="$ENTRY_POINT" --base-image="$BASE_IMAGE" --image="$IMAGE" --no-allow-unauthenticated \
      --build-service-account="projects/$PROJECT/serviceAccounts/$BUILD_EMAIL" "${SETTINGS_FLAGS[@]}" --region="$REGION" "${P[@]}"
    RETRY_ALSO=()
    read_service || is_dry_run || die "service $FUNCTION_NAME not found after deploying it"
  else
    run "put the settings of $FUNCTION_NAME back" gcloud run services update "$FUNCTION_NAME" "${SETTINGS_FLAGS[@]}" --region="$REGION" "${P[@]}"
  fi
  SERVICE_URL=${SERVICE_URL:-SERVICE_URL}
}

# ------------------------------------------------------------------ Stream A's push subscription

PUSH_FORMAT='value[separator="|"](topic,ackDeadlineSeconds,retryPolicy.minimumBackoff,retryPolicy.maximumBackoff,expirationPolicy.ttl,pushConfig.pushEndpoint,pushConfig.oidcToken.serviceAccountEmail,pushConfig.oidcToken.audience,deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts)'
read_push_subscription() {
  PUSH_LIVE=()
  query gcloud pubsub subscriptions describe "$PUSH_SUBSCRIPTION" "${P[@]}" --format="$PUSH_FORMAT" || return 1
  IFS='|' read -r -a PUSH_LIVE <<<"$QUERY_OUT|"
}

# Made before the function, as a subscription that only holds Stream A's messages (nothing pulls
# it, so nothing counts as a delivery attempt), without a dead-letter policy; it pushes once the
# invoker may call the service. Updated in place afterwards, never deleted or re-created.
create_push_subscription() {
  if read_push_subscription; then
    [[ ${PUSH_LIVE[0]} == "projects/$PROJECT/topics/$INPUT_TOPIC" ]] ||
      die "subscription $PUSH_SUBSCRIPTION is on ${PUSH_LIVE[0]}, not $INPUT_TOPIC: pass --push-subscription"
    ok "push subscription $PUSH_SUBSCRIPTION exists"
  else
    run "create Stream A's subscription $PUSH_SUBSCRIPTION (pushing later)" gcloud pubsub subscriptions create \
      "$PUSH_SUBSCRIPTION" --topic="$INPUT_TOPIC" --ack-deadline="$ACK_DEADLINE" --min-retry-delay="${MIN_RETRY_DELAY}s" \
      --max-retry-delay="${MAX_RETRY_DELAY}s" --expiration-period=never --labels="$LABELS" "${P[@]}"
    read_push_subscription || PUSH_LIVE=("projects/$PROJECT/topics/$INPUT_TOPIC" "$ACK_DEADLINE" "${MIN_RETRY_DELAY}s" "${MAX_RETRY_DELAY}s")
  fi
}

# update_push_subscription [dead-letter]: the push endpoint is the service URL with Stream A's
# topic as the path, which functions-framework reads into the CloudEvent's source, so the OIDC
# audience is set to the service URL, what Cloud Run checks (https://cloud.google.com/run/docs/
# triggering/pubsub-push). The dead-letter policy only with `dead-letter`, or once it is set.
update_push_subscription() {
  local flags=() i live=("${PUSH_LIVE[@]:1}") wanted=("$ACK_DEADLINE" "${MIN_RETRY_DELAY}s" "${MAX_RETRY_DELAY}s" ""
    "$SERVICE_URL/projects/$PROJECT/topics/$INPUT_TOPIC" "$INVOKER_EMAIL" "$SERVICE_URL"
    "projects/$PROJECT/topics/$DEAD_LETTER_TOPIC" "$MAX_DELIVERY_ATTEMPTS")
  local setting=("ack deadline" "retry delays" "retry delays" expiry endpoint "push identity" audience dead-letter dead-letter)
  for i in "${!wanted[@]}"; do
    [[ ${live[i]:-} != "${wanted[i]}" ]] && ((i < 7)) || [[ ${live[i]:-} != "${wanted[i]}" && (${1:-} == dead-letter || -n ${live[7]:-}) ]] || continue
    [[ -z ${live[i]:-} ]] || log "    drift: push subscription ${setting[i]}: ${live[i]} -> ${wanted[i]}"
    case ${setting[i]} in
      ack*) flags+=(--ack-deadline="$ACK_DEADLINE") ;;
      retry*) flags+=(--min-retry-delay="${MIN_RETRY_DELAY}s" --max-retry-delay="${MAX_RETRY_DELAY}s") ;;
      expiry) flags+=(--expiration-period=never) ;;
      dead*) flags+=(--dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS") ;;
      *) flags+=(--push-endpoint="${wanted[4]}" --push-auth-service-account="$INVOKER_EMAIL" --push-auth-token-audience="$SERVICE_URL") ;;
    esac
  done
  ((${#flags[@]} > 0)) || { ok "push subscription $PUSH_SUBSCRIPTION has every setting" && return 0; }
  mapfile -t flags < <(printf '%s\n' "${flags[@]}" | awk '!seen[$0]++')
  run "settings of push subscription $PUSH_SUBSCRIPTION" gcloud pubsub subscriptions update "$PUSH_SUBSCRIPTION" "${flags[@]}" "${P[@]}"
  if [[ ${1:-} == dead-letter ]]; then PUSH_LIVE=("${PUSH_LIVE[0]}" "${wanted[@]}"); else PUSH_LIVE=("${PUSH_LIVE[0]}" "${wanted[@]:0:7}" "${live[@]:7}"); fi
}

# ---------------------------------------------------------------------------------- operations

# gcloud 528 has `monitoring policies` in its alpha track only, `monitoring channels` and
# `services identity` in alpha and beta (surface/monitoring/policies/__init__.py, channels/
# __init__.py, surface/services/identity/__init__.py); bq is a component of its own. `gcloud info`
# reads what is installed without calling an API, so a missing one stops the run before any
# change (gcloud itself would offer to install it, which unattended it refuses). A dry run plans as
# if all were there.
check_components() {
  local alpha beta bq missing=()
  query gcloud info --format='value[separator="|"](installation.components.alpha,installation.components.beta,installation.components.bq)' || return 0
  IFS='|' read -r alpha beta bq <<<"$QUERY_OUT"
  if [[ -z $beta ]]; then # alpha has what deploy.sh takes from beta
    [[ -n $alpha ]] || missing+=(beta)
    BETA=alpha CHANNELS=(gcloud alpha monitoring channels)
  fi
  ((ALERTS == 0)) || [[ -n $alpha ]] || missing+=(alpha)
  ((PREDICTION_LOG == 0)) || [[ -n $bq ]] || missing+=(bq)
  ((${#missing[@]} == 0)) || die "this gcloud lacks its ${missing[*]} component(s), which deploy.sh uses (beta or alpha: the
  Pub/Sub service agent; alpha: alert policies; bq: the prediction log). Nothing was changed. Install them with
    gcloud components install ${missing[*]}
  (a gcloud installed with apt or yum: its google-cloud-cli package holds all three; Cloud Shell has them),
  or leave those parts out: --no-alerts, --no-prediction-log"
}

# The definitions of monitoring/, rendered for this deployment (monitoring/render.bash). Each also
# carries DEFINITION, a hash of its own rendered text, in a label (the log-based metrics: in their
# description): a re-run rewrites a resource only when the hash it carries differs, so a second
# run changes nothing and a change of a file or a threshold updates that resource in place.
# shellcheck disable=SC1091 # shellcheck checks render.bash on its own (Makefile)
source "$SCRIPT_DIR/monitoring/render.bash"
render() { # FILE: $WORK_DIR/rendered.json, RENDERED_ARGS (what `render_template` was given), DEFINITION
  local pair text values=("PROJECT_ID=$PROJECT" "SERVICE=$FUNCTION_NAME" "INPUT_TOPIC=$INPUT_TOPIC"
    "INPUT_SUBSCRIPTION=$PUSH_SUBSCRIPTION" "OUTPUT_TOPIC=$OUTPUT_TOPIC" "DEAD_LETTER_TOPIC=$DEAD_LETTER_TOPIC"
    "DEAD_LETTER_SUBSCRIPTION=$DEAD_LETTER_SUBSCRIPTION" "PREDICTION_LOG_SUBSCRIPTION=$PREDICTION_LOG_SUBSCRIPTION"
    "ALERT_EMAIL=$ALERT_EMAIL" "BACKLOG_AGE_SECONDS=$ALERT_BACKLOG_AGE_SECONDS" "ERROR_RATIO=$ALERT_ERROR_RATIO"
    "NO_PREDICTIONS_SECONDS=$ALERT_NO_PREDICTIONS_SECONDS")
  RENDERED_FILE=$1 RENDERED_ARGS=()
  for pair in "${values[@]}"; do grep -Fq "{{${pair%%=*}}}" "$1" && RENDERED_ARGS+=("$pair"); done
  text=$(render_template "$1" "${RENDERED_ARGS[@]}" DEFINITION=) || die "could not render $1"
  DEFINITION=$(printf '%s\n' "$text" | sha256 | cut -c1-16)
  RENDERED_ARGS+=("DEFINITION=$DEFINITION")
  render_template "$1" "${RENDERED_ARGS[@]}" >"$WORK_DIR/rendered.json"
}
run_rendered() { # DESCRIPTION COMMAND...: COMMAND reads the rendered file on its stdin (`-`)
  RUN_INPUT=$WORK_DIR/rendered.json DRY_PREFIX="$(shell_quote render_template "$RENDERED_FILE" "${RENDERED_ARGS[@]}") | " run "$@"
}

# Log-based metrics have fixed names (SERVICE-FILE) and no labels: the hash is in their description.
ensure_log_metrics() {
  local file name
  for file in monitoring/log-metrics/*.json; do
    render "$file" && name="$FUNCTION_NAME-$(basename "$file" .json)"
    if query gcloud logging metrics describe "$name" "${P[@]}" --format='value(description)'; then
      [[ $QUERY_OUT != *"definition $DEFINITION"* ]] || { ok "log-based metric $name" && continue; }
      run_rendered "log-based metric $name, in place" gcloud logging metrics update "$name" --config-from-file=- "${P[@]}"
    else
      run_rendered "create log-based metric $name" gcloud logging metrics create "$name" --config-from-file=- "${P[@]}"
    fi
  done
}

# The email channel, found by its labels: one with --alert-email (its address changes in place),
# none without. A channel deleted with --force leaves the policies that named it.
ensure_channel() {
  local found=() line
  CHANNEL=""
  query "${CHANNELS[@]}" list --filter="$OURS_FILTER" --format='value[separator="|"](name,userLabels.definition)' "${P[@]}" || true
  mapfile -t found < <(sed '/^$/d' <<<"$QUERY_OUT")
  if [[ -n $ALERT_EMAIL ]]; then
    render monitoring/notification-channel.json
    if ((${#found[@]} == 0)); then
      run_rendered "create the alerts' email channel" "${CHANNELS[@]}" create --channel-content-from-file=- "${P[@]}"
      query "${CHANNELS[@]}" list --filter="$OURS_FILTER" --format='value(name)' "${P[@]}" || true
      CHANNEL=${QUERY_OUT%%$'\n'*} && CHANNEL=${CHANNEL:-CHANNEL}
    else
      CHANNEL=${found[0]%%|*}
      if [[ ${found[0]#*|} == "$DEFINITION" ]]; then ok "email channel $CHANNEL"; else
        run_rendered "the alerts' email channel, in place" "${CHANNELS[@]}" update "$CHANNEL" --channel-content-from-file=- "${P[@]}"
      fi
      found=("${found[@]:1}")
    fi
  fi
  for line in ${found[@]+"${found[@]}"}; do
    run "delete email channel ${line%%|*}" "${CHANNELS[@]}" delete "${line%%|*}" --force --quiet "${P[@]}"
  done
}

# Alert policies have no name of our choosing: found by their labels, policy = the file's name.
# An update replaces the policy with the file (gcloud's `policies update --policy-from-file`) and
# keeps the notification channels the policy has (yours, added in the console) plus ours.
ensure_policies() {
  local live file stem name definition channels wanted=()
  query "${POLICIES[@]}" list --filter="$OURS_FILTER" "${P[@]}" \
    --format='value[separator="|"](userLabels.policy,name,userLabels.definition,notificationChannels.list())' || true
  live=$QUERY_OUT
  for file in monitoring/policies/*.json; do
    stem=$(basename "$file" .json) && render "$file"
    if ! IFS='|' read -r _ name definition channels < <(grep -m1 "^$stem|" <<<"$live"); then
      run_rendered "create alert policy $stem" "${POLICIES[@]}" create --policy-from-file=- \
        ${CHANNEL:+"--notification-channels=$CHANNEL"} "${P[@]}"
      continue
    fi
    [[ $definition != "$DEFINITION" || (-n $CHANNEL && ,$channels, != *",$CHANNEL,"*) ]] || { ok "alert policy $stem" && continue; }
    IFS=, read -r -a wanted <<<"$channels"
    [[ -z $CHANNEL || ,$channels, == *",$CHANNEL,"* ]] || wanted+=("$CHANNEL")
    run_rendered "alert policy $stem, in place" "${POLICIES[@]}" update "$name" --policy-from-file=- \
      ${wanted[0]:+"--set-notification-channels=$(IFS=, && echo "${wanted[*]}")"} "${P[@]}"
  done
  while IFS='|' read -r stem name _; do # a policy of ours that no file defines any more
    [[ -z $stem || -f monitoring/policies/$stem.json ]] || run "delete alert policy $stem" "${POLICIES[@]}" delete "$name" --quiet "${P[@]}"
  done <<<"$live"
}

# The dashboard's id is fixed by its file's name (SERVICE-operations). An update carries the etag
# it read (https://cloud.google.com/monitoring/api/ref_v3/rest/v1/projects.dashboards/patch).
ensure_dashboard() {
  local id="$FUNCTION_NAME-operations" etag definition text
  render monitoring/dashboard.json
  if query gcloud monitoring dashboards describe "$id" "${P[@]}" --format='value[separator="|"](etag,labels.definition)'; then
    IFS='|' read -r etag definition <<<"$QUERY_OUT"
    [[ $definition != "$DEFINITION" ]] || { ok "dashboard $id" && return 0; }
    text=$(<"$WORK_DIR/rendered.json") && printf '{"etag": "%s",%s\n' "$etag" "${text#\{}" >"$WORK_DIR/rendered.json"
    run_rendered "dashboard $id, in place" gcloud monitoring dashboards update "$id" --config-from-file=- "${P[@]}"
  else
    run_rendered "create dashboard $id" gcloud monitoring dashboards create --config-from-file=- "${P[@]}"
  fi
}

# The prediction log's dataset and table (bq: https://cloud.google.com/bigquery/docs/reference/
# bq-cli-reference), partitioned by day on publish_time, the column the docs' SQL filters on. The
# table's label deploy-sh-schema holds a hash of the schema file; `bq update --schema` adds the
# columns a newer schema has (BigQuery never drops one).
BQ_LABELS=(--label=managed-by:deploy-sh "--label=deploy-sh-function:$FUNCTION_NAME")
ensure_prediction_log_table() {
  local schema=monitoring/prediction-log.bigquery.json hash dataset="$PROJECT:$PREDICTION_LOG_DATASET"
  hash=$(sha256 <"$schema" | cut -c1-16)
  if query bq show --project_id="$PROJECT" --format=none "$dataset"; then ok "dataset $dataset exists"; else
    run "create dataset $dataset" bq mk --project_id="$PROJECT" --location="$REGION" --dataset "${BQ_LABELS[@]}" \
      "--description=Predictions of $FUNCTION_NAME (deploy.sh, docs/operations.md)" "$dataset"
  fi
  if query bq show --project_id="$PROJECT" --format=json "$PREDICTION_LOG_TABLE"; then
    [[ ! $QUERY_OUT =~ \"deploy-sh-schema\":\ ?\"$hash\" ]] || { ok "table $PREDICTION_LOG_TABLE has this schema" && return 0; }
    run "add the new columns of $schema to $PREDICTION_LOG_TABLE" bq update --project_id="$PROJECT" \
      --schema="$schema" "--set_label=deploy-sh-schema:$hash" "$PREDICTION_LOG_TABLE"
  else
    run "create table $PREDICTION_LOG_TABLE" bq mk --project_id="$PROJECT" --table --schema="$schema" \
      --time_partitioning_field=publish_time --time_partitioning_type=DAY --clustering_fields=version \
      "${BQ_LABELS[@]}" "--label=deploy-sh-schema:$hash" "--description=Every prediction of $FUNCTION_NAME but verify's" \
      "$PREDICTION_LOG_TABLE"
  fi
}

# The BigQuery subscription (https://cloud.google.com/pubsub/docs/bigquery; flags in gcloud's
# command_lib/pubsub/flags.py): the table's own columns, Pub/Sub's metadata, fields without a
# column dropped (the body's ride_id: the attribute keeps it); a row failing 5 times is parked on
# its dead-letter topic. Its filter cannot change after creation.
PREDICTION_LOG_FORMAT='value[separator="|"](topic,filter,bigqueryConfig.table,bigqueryConfig.useTableSchema,bigqueryConfig.writeMetadata,bigqueryConfig.dropUnknownFields,deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts,expirationPolicy.ttl)'
ensure_prediction_log_subscription() {
  local name=$PREDICTION_LOG_SUBSCRIPTION live table expected="projects/$PROJECT/topics/$OUTPUT_TOPIC|$PREDICTION_LOG_FILTER"
  local settings=(--bigquery-table="$PREDICTION_LOG_TABLE" --use-table-schema --write-metadata --drop-unknown-fields
    --dead-letter-topic="$PREDICTION_LOG_DEAD_LETTER" --max-delivery-attempts=5 --expiration-period=never)
  if query gcloud pubsub subscriptions describe "$name" "${P[@]}" --format="$PREDICTION_LOG_FORMAT"; then
    [[ $QUERY_OUT == "$expected|"* ]] || die "subscription $name is not on $OUTPUT_TOPIC with the filter
  $PREDICTION_LOG_FILTER (a filter cannot change): delete it, and deploy again"
    IFS='|' read -r _ _ table live <<<"$QUERY_OUT"
    live="${table/:/.}|$live" expected="${PREDICTION_LOG_TABLE/:/.}|True|True|True|projects/$PROJECT/topics/$PREDICTION_LOG_DEAD_LETTER|5|"
    [[ $live != "$expected" ]] || { ok "BigQuery subscription $name" && return 0; }
    log "    drift: subscription $name: $live -> $expected"
    run "settings of BigQuery subscription $name" gcloud pubsub subscriptions update "$name" "${settings[@]}" "${P[@]}"
  else
    # Pub/Sub checks that its agent may write the table; a grant just made may not apply yet.
    ((FRESH_GRANTS == 0)) || RETRY_ALSO=('The caller does not have permission')
    run "create BigQuery subscription $name on $OUTPUT_TOPIC" gcloud pubsub subscriptions create "$name" \
      --topic="$OUTPUT_TOPIC" --message-filter="$PREDICTION_LOG_FILTER" "${settings[@]}" --labels="$LABELS" "${P[@]}"
    RETRY_ALSO=()
  fi
}

# Cloud Run writes a request log entry per push (about 1.2 kB): from 10 msg/s the largest item of
# the bill (docs/cost.md). An exclusion on the project's _Default sink, for this service's request
# log only, keeps it from being stored or billed (flags: gcloud's surface/logging/sinks/update.py;
# https://cloud.google.com/logging/docs/routing/overview#exclusions). Request counts and latencies
# stay in Cloud Run's metrics.
ensure_request_log() {
  local name="$FUNCTION_NAME-request-log" has=0
  local filter="resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"$FUNCTION_NAME\" AND log_id(\"run.googleapis.com/requests\")"
  query gcloud logging sinks describe _Default "${P[@]}" --format='value(exclusions[].name)' || is_dry_run ||
    { log "    note: no _Default log sink: Cloud Run's request log goes where your sinks send it" && return 0; }
  [[ ";$QUERY_OUT;" != *";$name;"* ]] || has=1
  if [[ $REQUEST_LOG == exclude ]] && ((has == 0)); then
    run "exclude $FUNCTION_NAME's request log from the _Default sink" gcloud logging sinks update _Default \
      "--add-exclusion=name=$name,filter=$filter,description=deploy.sh: the request log of $FUNCTION_NAME" "${P[@]}"
  elif [[ $REQUEST_LOG == keep ]] && ((has == 1)); then
    run "keep $FUNCTION_NAME's request log again" gcloud logging sinks update _Default --remove-exclusions="$name" "${P[@]}"
  else
    ok "$FUNCTION_NAME's request log: $REQUEST_LOG"
  fi
}

# --no-prediction-log: the subscription and its dead letters go; the dataset and its history stay.
remove_prediction_log() {
  local name
  for name in "$PREDICTION_LOG_SUBSCRIPTION" "$PREDICTION_LOG_DEAD_LETTER-sub"; do
    ! query gcloud pubsub subscriptions describe "$name" "${P[@]}" --format='value(name)' ||
      run "delete subscription $name (--no-prediction-log)" gcloud pubsub subscriptions delete "$name" --quiet "${P[@]}"
  done
  ! query gcloud pubsub topics describe "$PREDICTION_LOG_DEAD_LETTER" "${P[@]}" --format='value(name)' ||
    run "delete topic $PREDICTION_LOG_DEAD_LETTER (--no-prediction-log)" gcloud pubsub topics delete "$PREDICTION_LOG_DEAD_LETTER" --quiet "${P[@]}"
  ok "the prediction log is off; dataset $PREDICTION_LOG_DATASET, if any, keeps its history"
}

# -------------------------------------------------------------------------------------- deploy

cmd_deploy() {
  [[ -n $MODEL_URI ]] || die "--model-uri is required, e.g. gs://BUCKET/1/RUN_ID/artifacts/model"
  [[ $MODEL_URI == gs://* || -n $ALLOW_PICKLE ]] || die "say whether the function may unpickle models from
  $MODEL_URI (a registry alias can move to any model later): --allow-pickle for pickle or cloudpickle models
  (whoever can register a model version can then run code in the function), --no-allow-pickle for skops"
  log "Deploying $FUNCTION_NAME to $PROJECT ($REGION): $INPUT_TOPIC -> $PUSH_SUBSCRIPTION -> function -> $OUTPUT_TOPIC"
  log "  model $MODEL_URI; $CPU vCPU, $MEMORY, $CONCURRENCY requests per instance, $MIN_INSTANCES-$MAX_INSTANCES instances, $BILLING billing,"
  log "  MESSAGE_LOG_LEVEL $MESSAGE_LOG_LEVEL, request log: $REQUEST_LOG${EXPECTED_RATE:+ (for $EXPECTED_RATE messages a second)}"
  check_components
  step "APIs, the sources bucket, the grant ledger"
  ensure_apis_and_project
  ensure_sources_bucket
  check_secrets_and_build_account
  plan_grants && ledger_read && LEDGER_BEFORE=$LEDGER
  ledger_write "$LEDGER"$'\n'"$(planned)"
  pickle_setting
  step "Pub/Sub topics and pull subscriptions"
  ensure_topic "$INPUT_TOPIC" && ensure_topic "$OUTPUT_TOPIC" && ensure_topic "$DEAD_LETTER_TOPIC"
  ensure_pull_subscription "$OUTPUT_SUBSCRIPTION" "$OUTPUT_TOPIC"
  ensure_pull_subscription "$DEAD_LETTER_SUBSCRIPTION" "$DEAD_LETTER_TOPIC" "$DEAD_LETTER_RETENTION"
  if ((PREDICTION_LOG == 1)); then
    ensure_topic "$PREDICTION_LOG_DEAD_LETTER"
    ensure_pull_subscription "$PREDICTION_LOG_DEAD_LETTER-sub" "$PREDICTION_LOG_DEAD_LETTER" "$DEAD_LETTER_RETENTION"
  fi
  step "Identities and their grants"
  ensure_service_account "$SERVICE_ACCOUNT" "$FN_EMAIL" "runtime identity"
  ensure_service_account "$INVOKER_SERVICE_ACCOUNT" "$INVOKER_EMAIL" "push identity"
  ((BUILD_SA_MANAGED == 0)) || ensure_service_account "$FUNCTION_NAME-build" "$BUILD_EMAIL" "build identity"
  ensure_repository
  grant_phase runtime && grant_phase build
  # A new project's Pub/Sub service agent may not exist yet: this creates or returns it.
  has_binding service-account "$INVOKER_EMAIL" roles/iam.serviceAccountTokenCreator "$AGENT_MEMBER" ||
    run "make sure the Pub/Sub service agent exists" gcloud "$BETA" services identity create --service=pubsub.googleapis.com "${P[@]}"
  grant_phase agent
  if ((PREDICTION_LOG == 1)); then
    step "The prediction log's BigQuery dataset and table"
    ensure_prediction_log_table && grant_phase table
  fi
  step "Monitoring: log-based metrics, $( ((ALERTS == 0)) || echo "alert policies, ")the dashboard"
  ensure_log_metrics && ensure_request_log
  if ((ALERTS == 1)); then ensure_channel && ensure_policies; else ok "alert policies left alone (--no-alerts)"; fi
  ensure_dashboard
  step "Stream A's subscription, then the function"
  # The earlier version of this project was a Cloud Functions function with an Eventarc trigger
  # under this name: `gcloud run deploy` would update that function's own service (which a later
  # `gcloud functions delete` would delete), so it is detached once Stream A's new subscription
  # holds every new message; its trigger keeps pushing meanwhile (docs/deploy.md).
  local earlier=""
  if grep -Fxq cloudfunctions.googleapis.com <<<"$ENABLED_APIS" &&
    query gcloud functions describe "$FUNCTION_NAME" --region="$REGION" "${P[@]}" --format='value(eventTrigger.trigger)'; then
    earlier=${QUERY_OUT:-none} && log "    moving the earlier version (Cloud Functions, Eventarc trigger $earlier) over"
  fi
  create_push_subscription
  grant_phase subscription
  [[ -z $earlier ]] || run "detach $FUNCTION_NAME from Cloud Functions" gcloud functions detach "$FUNCTION_NAME" --region="$REGION" "${P[@]}"
  ensure_service
  grant_phase service
  # Before Stream A's rides are pushed, so the log misses no prediction; after the build, so the
  # agent's grant on the table has had minutes to apply.
  if ((PREDICTION_LOG == 1)); then ensure_prediction_log_subscription && grant_phase log; else remove_prediction_log; fi
  update_push_subscription
  revoke_unplanned
  step "Deployed"
  if [[ -z ${PUSH_LIVE[8]:-} ]]; then
    # Dead-lettering is armed once a ride went through: until the invoker's grant reaches Cloud
    # Run, pushes are refused, and with the policy set those rides would be dead-lettered.
    log "    the dead-letter policy comes once a ride has gone through"
    cmd_verify && update_push_subscription dead-letter
  elif [[ $VERIFY == yes || ($VERIFY == auto && $CHANGES -gt 0) ]]; then
    cmd_verify
  else
    ok "nothing changed, so nothing is published (--verify to check anyway)"
  fi
  [[ -z $earlier ]] || log "The earlier version's Eventarc trigger still pushes Stream A too (duplicates, nothing lost).
Once its subscription's backlog is 0 (docs/deploy.md, \"Moving from the Eventarc version\"):
  gcloud eventarc triggers delete ${earlier##*/} --location=$REGION --project=$PROJECT"
}

# -------------------------------------------------------------------------------------- verify

# The sample ride, with the attribute deploy_verify=RUN_ID, which the function copies onto its
# prediction and dead letters (consumers drop such messages). Two subscriptions of verify's own,
# made before it publishes, see only that ride: one on Stream B, one on the dead-letter topic.
cmd_verify() {
  step "Verify: a ride on $INPUT_TOPIC must come out on $OUTPUT_TOPIC"
  local id=${DEPLOY_VERIFY_RUN_ID:-deploy-verify-$(date +%s)-$RANDOM} sub result="" deadline=$((SECONDS + VERIFY_TIMEOUT))
  local predictions="$FUNCTION_NAME-$id" rejects="$FUNCTION_NAME-$id-dead-letters"
  for sub in "$predictions" "$rejects"; do
    VERIFY_SUBSCRIPTIONS+=("$sub")
    run "subscription $sub for this ride only" gcloud pubsub subscriptions create "$sub" \
      --topic="$([[ $sub == "$predictions" ]] && echo "$OUTPUT_TOPIC" || echo "$DEAD_LETTER_TOPIC")" \
      --message-filter="attributes.deploy_verify = \"$id\"" --expiration-period=1d --message-retention-duration=10m --labels="$LABELS" "${P[@]}"
  done
  run "publish the sample ride $id" gcloud pubsub topics publish "$INPUT_TOPIC" --message="{\"ride\": $SAMPLE_RIDE, \"ride_id\": \"$id\"}" \
    --attribute="deploy_verify=$id,ride_id=$id" "${P[@]}"
  local pull_prediction=(gcloud pubsub subscriptions pull "$predictions" --limit=1 "${P[@]}" --format='value(message.data.decode(base64).decode(utf-8))')
  local pull_reject=(gcloud pubsub subscriptions pull "$rejects" --limit=1 "${P[@]}"
    --format='value[separator="|"](message.messageId,message.attributes.dlq_reason,message.attributes.CloudPubSubDeadLetterSourceDeliveryCount)')
  if is_dry_run; then shell_quote "${pull_prediction[@]}" && shell_quote "${pull_reject[@]}"; else
    log "    waiting up to ${VERIFY_TIMEOUT}s for the prediction (a cold start loads the model first)"
    while query "${pull_prediction[@]}" && result=$QUERY_OUT && [[ -z $result ]]; do
      query "${pull_reject[@]}" || die "subscription $rejects not found"
      [[ -z $QUERY_OUT ]] || verify_dead_letter "$id" "$QUERY_OUT"
      ((SECONDS < deadline)) || die "NOT VERIFIED: no prediction for ride $id within ${VERIFY_TIMEOUT}s.
  The function's logs: ./$SCRIPT_NAME logs --project $PROJECT --region $REGION"
      sleep "$DEPLOY_VERIFY_POLL_SECONDS"
    done
    [[ -n $result ]] || die "subscription $predictions not found"
  fi
  for sub in "$predictions" "$rejects"; do run "delete verify's subscription $sub" gcloud pubsub subscriptions delete "$sub" --quiet "${P[@]}"; done
  VERIFY_SUBSCRIPTIONS=()
  is_dry_run || { log "VERIFIED: ride $id went $INPUT_TOPIC -> $FUNCTION_NAME -> $OUTPUT_TOPIC" && printf '%s\n' "$result"; }
}

verify_dead_letter() { # RUN_ID "ID|DLQ_REASON|DELIVERY_COUNT": fails verify, saying which kind
  local reason=${2#*|} count=${2##*|}
  reason=${reason%|*}
  [[ -z $reason ]] || die "NOT VERIFIED: the function rejected ride $1 as permanently bad (dlq_reason: $reason).
  The plumbing works; the ride or the model does not fit (docs/failures.md)."
  [[ -z $count ]] || die "NOT VERIFIED: Pub/Sub gave up on ride $1 after $count delivery attempts and forwarded it to
  $DEAD_LETTER_TOPIC itself (no dlq_reason): the function never accepted the push. Refused pushes (403)
  mean $INVOKER_EMAIL may not invoke the service (a grant missing or still propagating); failed
  ones (5xx, timeouts) are the function's errors: ./$SCRIPT_NAME logs. Fix, then verify again."
  die "NOT VERIFIED: ride $1 reached $DEAD_LETTER_TOPIC without a dlq_reason or Pub/Sub's dead-letter attributes"
}

cmd_logs() {
  local logs=(gcloud run services logs read "$FUNCTION_NAME" --region="$REGION" --limit="$LOG_LIMIT" "${P[@]}")
  if is_dry_run; then shell_quote "${logs[@]}"; else "${logs[@]}" </dev/null; fi
}

# ------------------------------------------------------------------------------------- destroy

# destroy_listed WHAT LIST-COMMAND... -- DELETE-COMMAND...: deletes what the list names (`{}`
# in the delete command stands for each name).
destroy_listed() {
  local what=$1 list=() name
  shift
  while [[ $1 != -- ]]; do list+=("$1") && shift; done
  shift
  query "${list[@]}" || true
  ! is_dry_run || QUERY_OUT=$([[ $what == account ]] && echo "ACCOUNT@$PROJECT.iam.gserviceaccount.com" || echo NAME)
  for name in $QUERY_OUT; do run "delete $what ${name##*/}" "${@/#\{\}/${name##*/}}"; done
}

# Every grant in the ledger, then every resource labelled (service accounts: described) as this
# function's, then the sources bucket if deploy.sh made it and it holds only this function's files.
cmd_destroy() {
  local line kind name role member objects="" prefix labelled="labels.deploy-sh-function=$FUNCTION_NAME"
  if [[ $ASSUME_YES != 1 ]] && ! is_dry_run; then
    [[ -t 0 ]] || die "without a terminal to ask on, destroy needs --yes; nothing was deleted"
    printf 'Delete what deploy.sh made for %s in %s? Type the project id: ' "$FUNCTION_NAME" "$PROJECT" >&2
    read -r line || true
    [[ $line == "$PROJECT" ]] || die "not confirmed; nothing was deleted"
  fi
  check_components
  step "Destroy $FUNCTION_NAME in $PROJECT ($REGION): the grants in $LEDGER_URL, the resources by label"
  ledger_read
  while IFS=$'\t' read -r kind name role member; do
    [[ -z $kind || ($kind == table && $PREDICTION_LOG == 0) ]] || revoke "$kind" "$name" "$role" "$member"
  done <<<"$LEDGER"
  if query gcloud run services describe "$FUNCTION_NAME" --region="$REGION" "${P[@]}" --format='value(metadata.labels)' &&
    [[ $QUERY_OUT == *"$MANAGED_MARK"* ]] || is_dry_run; then
    run "delete service $FUNCTION_NAME" gcloud run services delete "$FUNCTION_NAME" --region="$REGION" --quiet "${P[@]}"
  fi
  destroy_operations
  destroy_listed subscription gcloud pubsub subscriptions list --filter="$labelled" --format='value(name)' "${P[@]}" -- \
    gcloud pubsub subscriptions delete {} --quiet "${P[@]}"
  destroy_listed topic gcloud pubsub topics list --filter="$labelled" --format='value(name)' "${P[@]}" -- \
    gcloud pubsub topics delete {} --quiet "${P[@]}"
  destroy_listed repository gcloud artifacts repositories list --location="$REGION" --filter="$labelled" --format='value(name)' "${P[@]}" -- \
    gcloud artifacts repositories delete {} --location="$REGION" --quiet "${P[@]}"
  destroy_listed account gcloud iam service-accounts list --filter="description~'$SA_MARK\$'" --format='value(email)' "${P[@]}" -- \
    gcloud iam service-accounts delete {} --quiet "${P[@]}"
  query gcloud storage ls "gs://$SOURCES_BUCKET/**" "${P[@]}" && objects=$QUERY_OUT
  if { query gcloud storage buckets describe "gs://$SOURCES_BUCKET" --format='value(labels)' "${P[@]}" &&
    [[ $QUERY_OUT == *"$MANAGED_MARK"* ]] && ! grep -v -e "/services/$FUNCTION_NAME/" -e "/deploy-sh/$FUNCTION_NAME/" <<<"$objects" | grep -q .; } || is_dry_run; then
    run "delete gs://$SOURCES_BUCKET" gcloud storage rm --recursive "gs://$SOURCES_BUCKET" "${P[@]}"
  else
    for prefix in "services/$FUNCTION_NAME" "deploy-sh/$FUNCTION_NAME"; do
      if grep -q "gs://$SOURCES_BUCKET/$prefix/" <<<"$objects"; then
        run "delete gs://$SOURCES_BUCKET/$prefix" gcloud storage rm --recursive "gs://$SOURCES_BUCKET/$prefix" "${P[@]}"
      fi
    done
  fi
  step "Destroyed (APIs stay enabled; what deploy.sh did not make is kept)"
}

# The alert policies and the channel by their labels, the dashboard and the log-based metrics by
# name if they are deploy.sh's; the prediction log's dataset too, unless --keep-prediction-log.
destroy_operations() {
  local file name dataset="$PROJECT:$PREDICTION_LOG_DATASET"
  if ((ALERTS == 1)); then
    destroy_listed "alert policy" "${POLICIES[@]}" list --filter="$OURS_FILTER" --format='value(name)' "${P[@]}" -- \
      "${POLICIES[@]}" delete {} --quiet "${P[@]}"
    destroy_listed "email channel" "${CHANNELS[@]}" list --filter="$OURS_FILTER" --format='value(name)' "${P[@]}" -- \
      "${CHANNELS[@]}" delete {} --force --quiet "${P[@]}"
  fi
  if { query gcloud monitoring dashboards describe "$FUNCTION_NAME-operations" "${P[@]}" --format='value(labels.managed_by)' &&
    [[ $QUERY_OUT == ride-prediction-deploy ]]; } || is_dry_run; then
    run "delete dashboard $FUNCTION_NAME-operations" gcloud monitoring dashboards delete "$FUNCTION_NAME-operations" --quiet "${P[@]}"
  fi
  REQUEST_LOG=keep && ensure_request_log
  for file in monitoring/log-metrics/*.json; do
    name="$FUNCTION_NAME-$(basename "$file" .json)"
    if { query gcloud logging metrics describe "$name" "${P[@]}" --format='value(description)' &&
      [[ $QUERY_OUT == *"(deploy.sh definition "* ]]; } || is_dry_run; then
      run "delete log-based metric $name" gcloud logging metrics delete "$name" --quiet "${P[@]}"
    fi
  done
  ((PREDICTION_LOG == 1)) || return 0
  if ((KEEP_PREDICTION_LOG == 1)); then
    ! query bq show --project_id="$PROJECT" --format=none "$dataset" ||
      log "    kept: dataset $dataset, the prediction history (--keep-prediction-log)"
  elif { query bq show --project_id="$PROJECT" --format=json "$dataset" &&
    [[ $QUERY_OUT =~ \"deploy-sh-function\":\ ?\"$FUNCTION_NAME\" ]]; } || is_dry_run; then
    run "delete dataset $dataset and every prediction in it" bq rm --project_id="$PROJECT" --recursive --force --dataset "$dataset"
  fi
}

case $COMMAND in
  deploy) cmd_deploy ;;
  verify) cmd_verify ;;
  logs) cmd_logs ;;
  destroy) cmd_destroy ;;
esac
