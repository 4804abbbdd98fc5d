#!/usr/bin/env bash
# deploy.sh: a GCP project, empty or not, to a verified ride-prediction Cloud Run function fed by
# its own Pub/Sub push subscription, unattended.
#
#   ./deploy.sh [deploy]  create or update everything, put drift back, verify if anything changed
#   ./deploy.sh verify    the tutorial's ride through Stream A -> function -> Stream B
#   ./deploy.sh logs      the function's recent logs
#   ./deploy.sh destroy   delete every resource and grant deploy.sh made (--yes)
#
# --dry-run prints the gcloud commands instead of running them. Each step reads the current state
# before it changes anything, so a second run with nothing changed changes nothing. See --help and
# docs/deploy.md (every setting and grant, and the documentation behind each).
set -euo pipefail
# Never a prompt: where gcloud would ask, the script has already made what the question is about.
export CLOUDSDK_CORE_DISABLE_PROMPTS=1

SCRIPT_NAME=deploy.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Cost defaults, in one place: docs/speed.md's cost table sets them. Billing "request": CPU only
# while a request runs, plus a fee per request; "instance": CPU for the instance's whole life, no
# request fee (https://cloud.google.com/run/docs/configuring/billing-settings).
DEFAULT_BILLING=request
DEFAULT_MIN_INSTANCES=0
DEFAULT_CONCURRENCY=32
# The function's PUBLISH_MAX_RPCS_IN_FLIGHT in each billing mode.
declare -A PUBLISH_RPCS_FOR_BILLING=([request]=4 [instance]=4)

# The runtime files are the `!/FILE` lines of .gcloudignore, the one list the upload follows;
# the deploy refuses to upload anything else (tests/test_packaging.py checks the other lists).
mapfile -t RUNTIME_FILES < <(sed -n 's|^!/||p' "$SCRIPT_DIR/.gcloudignore")
# Stream A's push subscription settings, shared with the local stack (devstack/).
PUSH_SETTINGS_FILE="$SCRIPT_DIR/push-subscription.env"
CLEANUP_POLICY_FILE="$SCRIPT_DIR/artifact-cleanup-policy.json"
# What Artifact Registry reports for that policy (keep 5, delete after 30 days).
CLEANUP_POLICY_STATE='5|2592000s'
ENTRY_POINT=predict_duration
MANAGED_MARK=managed-by=deploy-sh
# The tutorial's sample ride (its steps 03 and 06).
SAMPLE_RIDE='{"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}'
REQUIRED_APIS=(artifactregistry.googleapis.com cloudbuild.googleapis.com
  cloudresourcemanager.googleapis.com iam.googleapis.com logging.googleapis.com
  pubsub.googleapis.com run.googleapis.com storage.googleapis.com)
# Errors that documented propagation delays cause, retried (bounded); any other stops the script.
# Service Usage's own text; a new service account IAM does not see yet; concurrent IAM edits
# (https://cloud.google.com/iam/docs/access-change-propagation).
TRANSIENT_ERRORS=('If you enabled this API recently, wait a few minutes'
  '[Ss]ervice account [^ ]+ does not exist' 'There were concurrent policy changes')
# A build or a deploy refused for want of a permission: retried only in a run that just made grants.
FRESH_GRANT_ERRORS=('Build failed.*([Pp]ermission|[Dd]enied|does not have .* access)'
  'Permission denied on secret')

usage() {
  cat <<USAGE
Usage: ./$SCRIPT_NAME [deploy|verify|logs|destroy] [options]   (docs/deploy.md)

  deploy   (default) create or update everything, put back what drifted, then verify if
           anything changed (or with --verify)
  verify   publish the tutorial's ride to Stream A, marked with the attribute deploy_verify,
           and wait for its prediction on Stream B (a dead letter fails it at once)
  logs     the function's recent logs (gcloud run services logs read)
  destroy  delete every resource and grant deploy.sh made, read back from the project;
           needs --yes unless run on a terminal

Options (flags only; the environment is not read, except DEPLOY_RETRY_* below):
  --project ID                default: gcloud config get-value project
  --region REGION             default: us-central1
  --function-name NAME        the Cloud Run function (service), default: ride-prediction
  --model-uri URI             required for deploy: gs://BUCKET/.../model or models:/NAME@ALIAS
  --model-bucket BUCKET       bucket the function may read; default: a gs:// model's bucket
  --allow-pickle | --no-allow-pickle
                              the function's MLFLOW_ALLOW_PICKLE_DESERIALIZATION; default for
                              gs://: what the model's MLmodel needs; required for registry URIs
  --mlflow-tracking-uri URI   (no user:password@ in it: use the secrets below)
  --mlflow-tracking-token-secret SECRET[:VERSION]     Secret Manager secret the function
  --mlflow-tracking-username-secret SECRET[:VERSION]  reads as MLFLOW_TRACKING_TOKEN, or
  --mlflow-tracking-password-secret SECRET[:VERSION]  _USERNAME and _PASSWORD
  --model-name NAME, --model-version V, --model-refresh-seconds N   passed to the function
  --input-topic T             Stream A, default: taxi-ride-streaming
  --output-topic T            Stream B, default: ride-predictions
  --output-subscription S     default: ride-predictions-sub
  --push-subscription S       Stream A's push subscription, default: FUNCTION-NAME-push
  --dead-letter-topic T       default: FUNCTION-NAME-dead-letter
  --dead-letter-subscription S  default: DEAD-LETTER-TOPIC-sub
  --dead-letter-retention D   10m to 31d, default: 31d
  --ack-deadline S, --min-retry-delay S, --max-retry-delay S, --max-delivery-attempts N
                              the push subscription's settings; defaults: push-subscription.env
  --service-account NAME      the function's identity, default: FUNCTION-NAME-fn
  --invoker-service-account NAME  the pushes' identity, default: FUNCTION-NAME-invoker
  --build-service-account ACCOUNT  an account you prepared (docs/deploy.md); default:
                              deploy.sh creates FUNCTION-NAME-build
  --docker-repository NAME    Artifact Registry repository, default: FUNCTION-NAME-images
  --base-image IMAGE          default: python312
  --cpu N (default 1)  --memory SIZE (1Gi)  --timeout SECONDS (60)  --ingress internal|all
  --concurrency N             requests per instance (1-1000), default: $DEFAULT_CONCURRENCY
  --billing request|instance  default: $DEFAULT_BILLING (docs/deploy.md, "Billing")
  --min-instances N (default $DEFAULT_MIN_INSTANCES)  --max-instances N (default 10)
  --cpu-boost | --no-cpu-boost  startup CPU boost, default: on
  --env KEY=VALUE             extra environment variable for the function (repeatable)
  --force                     rebuild even if the source did not change
  --verify | --no-verify      verify even if nothing changed | skip it (a run that arms
                              dead-lettering still verifies first)
  --verify-timeout SECONDS    default: 600      --log-limit N   default: 50
  --yes                       destroy without asking
  --dry-run                   print the gcloud commands instead of running them; values known
                              only at run time appear as UPPER_CASE placeholders
  -h, --help

Retries: errors of documented propagation delays are retried DEPLOY_RETRY_ATTEMPTS times
(default 6), waiting DEPLOY_RETRY_DELAY_SECONDS (15, doubling up to 120).
USAGE
}

# ---------------------------------------------------------------------------- running gcloud

log() { printf '%s\n' "$*" >&2; }
step() { log "==> $*"; }
ok() { log "    ok: $*"; }
die() {
  log "$SCRIPT_NAME: error: $*"
  exit 1
}
is_dry_run() { [[ $DRY_RUN == 1 ]]; }

# Quote words so that a POSIX shell (and Python's shlex) reads them back unchanged.
shell_quote() {
  local word quoted=() squote="'\\''"
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then quoted+=("$word"); else quoted+=("'${word//\'/$squote}'"); fi
  done
  printf '%s\n' "${quoted[*]}"
}

# retry_pause ATTEMPT: after a failure whose stderr is in $WORK_DIR/stderr, sleeps and returns 0
# if the error is a propagation delay and attempts are left; returns 1 otherwise.
retry_pause() {
  local attempt=$1 pattern matched="" delay=$DEPLOY_RETRY_DELAY_SECONDS i
  for pattern in "${TRANSIENT_ERRORS[@]}" ${RETRY_ALSO[@]+"${RETRY_ALSO[@]}"}; do
    grep -Eq -- "$pattern" "$WORK_DIR/stderr" && matched=$pattern && break
  done
  [[ -n $matched ]] || return 1
  for ((i = 1; i < attempt && delay < 120; i++)); do delay=$((delay * 2)); done
  ((delay <= 120)) || delay=120
  if ((attempt >= DEPLOY_RETRY_ATTEMPTS)); then
    log "      attempt $attempt of $DEPLOY_RETRY_ATTEMPTS failed (a propagation delay: '$matched'); giving up"
    return 1
  fi
  log "      attempt $attempt of $DEPLOY_RETRY_ATTEMPTS failed (a propagation delay: '$matched'); retrying in ${delay}s"
  sleep "$delay"
}

# run DESCRIPTION COMMAND...: a command that changes something (stdout to our stderr; stdin is
# RUN_INPUT or nothing). Dry run: print the command.
CHANGES=0
run() {
  local description=$1 attempt=1 status
  shift
  CHANGES=$((CHANGES + 1))
  if is_dry_run; then
    shell_quote "$@"
    return 0
  fi
  log "    + $description"
  log "      \$ $(shell_quote "$@")"
  while true; do
    status=0
    { "$@" <"${RUN_INPUT:-/dev/null}" 2>&1 1>&3 3>&- | tee "$WORK_DIR/stderr" >&2 3>&-; } 3>&2 || status=$?
    ((status == 0)) && return 0
    retry_pause "$attempt" || die "'$description' failed (exit $status): $(shell_quote "$@")
Nothing after this step was changed. Fix the cause above and re-run; re-running is safe."
    attempt=$((attempt + 1))
  done
}

# query COMMAND...: a read-only command; QUERY_OUT holds its output. Returns 1 if the resource
# does not exist; stops on any other error (no permission is not "absent": creating then could
# clobber). Dry run: prints the command and answers "does not exist".
QUERY_OUT=""
query() {
  QUERY_OUT=""
  if is_dry_run; then
    shell_quote "$@"
    return 1
  fi
  local attempt=1 status
  while true; do
    status=0
    QUERY_OUT=$("$@" </dev/null 2>"$WORK_DIR/stderr") || status=$?
    ((status == 0)) && return 0
    if ! grep -q PERMISSION_DENIED "$WORK_DIR/stderr" &&
      grep -Eqi 'NOT_FOUND|not found|does not exist|status=\[404\]|Cannot find|matched no objects' "$WORK_DIR/stderr"; then
      return 1
    fi
    if ! retry_pause "$attempt"; then
      cat "$WORK_DIR/stderr" >&2
      die "could not read the current state (exit $status): $(shell_quote "$@")"
    fi
    attempt=$((attempt + 1))
  done
}

# ----------------------------------------------------------------------------------- IAM

# iam_command VERB KIND NAME: IAM_COMMAND is the gcloud command for an IAM VERB on a resource.
# Kinds other than Pub/Sub take --condition=None: unattended, gcloud refuses to edit a policy that
# holds conditional bindings without it (googlecloudsdk/command_lib/iam/iam_util.py).
iam_command() {
  local verb=$1 kind=$2 name=$3 condition=(--condition=None)
  case $kind in
    project) IAM_COMMAND=(gcloud projects "$verb" "$name") ;;
    topic) IAM_COMMAND=(gcloud pubsub topics "$verb" "$name" "${P[@]}") && condition=() ;;
    subscription) IAM_COMMAND=(gcloud pubsub subscriptions "$verb" "$name" "${P[@]}") && condition=() ;;
    service-account) IAM_COMMAND=(gcloud iam service-accounts "$verb" "$name" "${P[@]}") ;;
    bucket) IAM_COMMAND=(gcloud storage buckets "$verb" "gs://$name" "${P[@]}") ;;
    repository) IAM_COMMAND=(gcloud artifacts repositories "$verb" "$name" --location="$REGION" "${P[@]}") ;;
    secret) IAM_COMMAND=(gcloud secrets "$verb" "$name" "${P[@]}") ;;
    service) IAM_COMMAND=(gcloud run services "$verb" "$name" --region="$REGION" "${P[@]}") ;;
    *) die "unknown IAM resource kind $kind" ;;
  esac
  [[ $verb == get-iam-policy ]] || IAM_COMMAND+=("${condition[@]}")
}

# has_binding KIND NAME ROLE MEMBER: whether the resource grants ROLE to MEMBER unconditionally
# (a format filter works on every get-iam-policy, also `gcloud storage buckets`, which has no
# --filter). A resource that does not exist has no binding.
has_binding() {
  iam_command get-iam-policy "$1" "$2"
  query "${IAM_COMMAND[@]}" \
    --format="value(bindings.filter(\"role=$3 AND members=$4 AND -condition:*\").extract(role).flatten())" &&
    [[ -n $QUERY_OUT ]]
}

grant() { # grant KIND NAME ROLE MEMBER
  if has_binding "$@"; then
    ok "$4 has $3 on $1 $2"
    return 0
  fi
  iam_command add-iam-policy-binding "$1" "$2"
  run "grant $3 on $1 $2 to $4" "${IAM_COMMAND[@]}" --member="$4" --role="$3"
  FRESH_GRANTS=1
}

revoke() { # revoke KIND NAME ROLE MEMBER
  has_binding "$@" || is_dry_run || return 0
  iam_command remove-iam-policy-binding "$1" "$2"
  run "revoke $3 on $1 $2 from $4" "${IAM_COMMAND[@]}" --member="$4" --role="$3"
}

# Every grant deploy.sh makes, one line each: PHASE KIND NAME ROLE MEMBER (tab-separated). The
# phase says when it is made; the ledger (below) records the rest of each line.
plan_grants() {
  local line secret
  GRANTS=()
  plan() {
    local IFS=$'\t'
    GRANTS+=("$*")
  }
  plan runtime topic "$OUTPUT_TOPIC" roles/pubsub.publisher "$FN_MEMBER"
  plan runtime topic "$DEAD_LETTER_TOPIC" roles/pubsub.publisher "$FN_MEMBER"
  [[ -z $MODEL_BUCKET ]] || plan runtime bucket "$MODEL_BUCKET" roles/storage.objectViewer "$FN_MEMBER"
  for line in ${SECRET_ENV[@]+"${SECRET_ENV[@]}"}; do
    secret=${line#*=}
    plan runtime secret "${secret%%:*}" roles/secretmanager.secretAccessor "$FN_MEMBER"
  done
  # The build, each on the narrowest resource the documentation allows (docs/deploy.md, "The
  # build identity"); Cloud Logging's roles exist only at project level.
  plan build repository "$DOCKER_REPOSITORY" roles/artifactregistry.writer "$BUILD_MEMBER"
  plan build bucket "$SOURCES_BUCKET" roles/storage.objectViewer "$BUILD_MEMBER"
  ((BUILD_SA_MANAGED == 0)) || plan build project "$PROJECT_ID" roles/logging.logWriter "$BUILD_MEMBER"
  # The Pub/Sub service agent signs the pushes as the invoker, and forwards dead letters: it
  # publishes to the dead-letter topic and acknowledges on the push subscription
  # (https://cloud.google.com/pubsub/docs/handling-failures, "Grant forwarding permissions").
  plan agent service-account "$INVOKER_EMAIL" roles/iam.serviceAccountTokenCreator "$AGENT_MEMBER"
  plan agent topic "$DEAD_LETTER_TOPIC" roles/pubsub.publisher "$AGENT_MEMBER"
  plan subscription subscription "$PUSH_SUBSCRIPTION" roles/pubsub.subscriber "$AGENT_MEMBER"
  plan service service "$FUNCTION_NAME" roles/run.invoker "$INVOKER_MEMBER"
}

grant_phase() {
  local line phase kind name role member
  for line in "${GRANTS[@]}"; do
    IFS=$'\t' read -r phase kind name role member <<<"$line"
    [[ $phase == "$1" ]] && grant "$kind" "$name" "$role" "$member"
  done
  return 0
}

# The ledger: every grant deploy.sh made, as KIND NAME ROLE MEMBER lines in
# gs://SOURCES_BUCKET/deploy-sh/FUNCTION/grants.tsv. It is written before the grants are made, so
# even a failed run leaves a complete record; `destroy` revokes from it alone, and a deploy revokes
# what it lists but no longer plans (a new model bucket, a secret dropped).
ledger_read() {
  LEDGER=()
  query gcloud storage cat "$LEDGER_URL" "${P[@]}" && mapfile -t LEDGER <<<"$QUERY_OUT"
  return 0
}

ledger_write() { # ledger_write LINE...: stores the lines if they differ from the ledger
  local file=$WORK_DIR/ledger
  printf '%s\n' "$@" | sed '/^$/d' | sort -u >"$file"
  [[ $(cat "$file") == "$(printf '%s\n' ${LEDGER[@]+"${LEDGER[@]}"} | sed '/^$/d' | sort -u)" ]] && return 0
  RUN_INPUT=$file run "record deploy.sh's grants in $LEDGER_URL" gcloud storage cp - "$LEDGER_URL" "${P[@]}"
  CHANGES=$((CHANGES - 1)) # bookkeeping, not a change of the deployment
  mapfile -t LEDGER <"$file"
}

planned_ledger_lines() {
  local line
  for line in "${GRANTS[@]}"; do printf '%s\n' "${line#*$'\t'}"; done
}

revoke_unplanned() {
  local line kind name role member planned
  planned=$(planned_ledger_lines)
  for line in ${LEDGER[@]+"${LEDGER[@]}"}; do
    grep -Fxq -- "$line" <<<"$planned" && continue
    IFS=$'\t' read -r kind name role member <<<"$line"
    revoke "$kind" "$name" "$role" "$member"
  done
  mapfile -t planned_lines <<<"$planned"
  ledger_write "${planned_lines[@]}"
}

# --------------------------------------------------------------------------- configuration

declare -A VALUE_FLAGS=(
  [--project]=PROJECT_ID [--region]=REGION [--function-name]=FUNCTION_NAME
  [--model-uri]=MODEL_URI [--model-bucket]=MODEL_BUCKET [--model-name]=MODEL_NAME
  [--model-version]=MODEL_VERSION [--model-refresh-seconds]=MODEL_REFRESH_SECONDS
  [--mlflow-tracking-uri]=MLFLOW_TRACKING_URI [--mlflow-tracking-token-secret]=TOKEN_SECRET
  [--mlflow-tracking-username-secret]=USERNAME_SECRET
  [--mlflow-tracking-password-secret]=PASSWORD_SECRET [--input-topic]=INPUT_TOPIC
  [--output-topic]=OUTPUT_TOPIC [--output-subscription]=OUTPUT_SUBSCRIPTION
  [--push-subscription]=PUSH_SUBSCRIPTION [--dead-letter-topic]=DEAD_LETTER_TOPIC
  [--dead-letter-subscription]=DEAD_LETTER_SUBSCRIPTION
  [--dead-letter-retention]=DEAD_LETTER_RETENTION [--ack-deadline]=ACK_DEADLINE
  [--min-retry-delay]=MIN_RETRY_DELAY [--max-retry-delay]=MAX_RETRY_DELAY
  [--max-delivery-attempts]=MAX_DELIVERY_ATTEMPTS [--service-account]=SERVICE_ACCOUNT
  [--invoker-service-account]=INVOKER_SERVICE_ACCOUNT
  [--build-service-account]=BUILD_SERVICE_ACCOUNT [--docker-repository]=DOCKER_REPOSITORY
  [--base-image]=BASE_IMAGE [--cpu]=CPU [--memory]=MEMORY [--concurrency]=CONCURRENCY
  [--timeout]=TIMEOUT [--min-instances]=MIN_INSTANCES [--max-instances]=MAX_INSTANCES
  [--billing]=BILLING [--ingress]=INGRESS [--verify-timeout]=VERIFY_TIMEOUT
  [--log-limit]=LOG_LIMIT
)
# Configuration comes from flags only: a REGION or CPU in the caller's environment changes nothing.
for name in "${VALUE_FLAGS[@]}"; do unset "$name"; done
COMMAND=deploy DRY_RUN=0 ASSUME_YES=0 FORCE=0 VERIFY=auto ALLOW_PICKLE="" CPU_BOOST=true
EXTRA_ENV=()

parse_args() {
  local command_set=0 flag
  while (($# > 0)); do
    flag=$1
    if [[ $flag == --*=* ]]; then set -- "${flag%%=*}" "${flag#*=}" "${@:2}" && flag=$1; fi
    case $flag in
      deploy | verify | logs | destroy)
        ((command_set == 0)) || die "one subcommand, please (got '$COMMAND' and '$flag')"
        COMMAND=$flag command_set=1
        ;;
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
      --*)
        [[ $flag == --env || -n ${VALUE_FLAGS[$flag]:-} ]] || die "unknown option '$flag' (see --help)"
        # A value that looks like an option (`--input-topic --help`) is a mistake, not a name.
        [[ $# -ge 2 && -n $2 && $2 != -* ]] || die "$flag needs a value (see --help)"
        if [[ $flag == --env ]]; then EXTRA_ENV+=("$2"); else printf -v "${VALUE_FLAGS[$flag]}" '%s' "$2"; fi
        shift
        ;;
      *) die "unknown argument '$flag' (see --help)" ;;
    esac
    shift
  done
}
parse_args "$@"

command -v gcloud >/dev/null || die "gcloud is not on PATH: install the Google Cloud CLI first"
if [[ -z ${PROJECT_ID:-} ]]; then
  PROJECT_ID=$(gcloud config get-value project 2>/dev/null </dev/null || true) # local only
  [[ -n $PROJECT_ID ]] || die "no project: pass --project ID"
fi

# Stream A's push subscription defaults (KEY=VALUE, shared with devstack/push_subscription.py).
while IFS='=' read -r key value; do
  [[ -z $key || $key == \#* ]] && continue
  case $key in
    ACK_DEADLINE_SECONDS | MIN_RETRY_DELAY_SECONDS | MAX_RETRY_DELAY_SECONDS | MAX_DELIVERY_ATTEMPTS) ;;
    *) die "$PUSH_SETTINGS_FILE: unknown setting '$key'" ;;
  esac
  [[ $value =~ ^[0-9]+$ ]] || die "$PUSH_SETTINGS_FILE: $key must be a whole number"
  printf -v "FILE_$key" '%s' "$value"
done <"$PUSH_SETTINGS_FILE"

: "${REGION:=us-central1}" "${FUNCTION_NAME:=ride-prediction}" "${MODEL_URI:=}" "${MODEL_BUCKET:=}"
: "${MODEL_NAME:=ride_duration_prediction_model}" "${MODEL_VERSION:=}" "${MODEL_REFRESH_SECONDS:=}"
: "${MLFLOW_TRACKING_URI:=}" "${TOKEN_SECRET:=}" "${USERNAME_SECRET:=}" "${PASSWORD_SECRET:=}"
: "${INPUT_TOPIC:=taxi-ride-streaming}" "${OUTPUT_TOPIC:=ride-predictions}"
: "${OUTPUT_SUBSCRIPTION:=ride-predictions-sub}" "${PUSH_SUBSCRIPTION:=$FUNCTION_NAME-push}"
: "${DEAD_LETTER_TOPIC:=$FUNCTION_NAME-dead-letter}" "${DEAD_LETTER_SUBSCRIPTION:=$DEAD_LETTER_TOPIC-sub}"
: "${DEAD_LETTER_RETENTION:=31d}" "${MAX_DELIVERY_ATTEMPTS:=$FILE_MAX_DELIVERY_ATTEMPTS}"
: "${MIN_RETRY_DELAY:=$FILE_MIN_RETRY_DELAY_SECONDS}" "${MAX_RETRY_DELAY:=$FILE_MAX_RETRY_DELAY_SECONDS}"
: "${SERVICE_ACCOUNT:=$FUNCTION_NAME-fn}" "${INVOKER_SERVICE_ACCOUNT:=$FUNCTION_NAME-invoker}"
: "${BUILD_SERVICE_ACCOUNT:=}" "${DOCKER_REPOSITORY:=$FUNCTION_NAME-images}" "${BASE_IMAGE:=python312}"
: "${CPU:=1}" "${MEMORY:=1Gi}" "${CONCURRENCY:=$DEFAULT_CONCURRENCY}" "${TIMEOUT:=60}"
: "${MIN_INSTANCES:=$DEFAULT_MIN_INSTANCES}" "${MAX_INSTANCES:=10}" "${BILLING:=$DEFAULT_BILLING}"
: "${INGRESS:=internal}" "${VERIFY_TIMEOUT:=600}" "${LOG_LIMIT:=50}"
: "${DEPLOY_RETRY_ATTEMPTS:=6}" "${DEPLOY_RETRY_DELAY_SECONDS:=15}" "${DEPLOY_VERIFY_POLL_SECONDS:=5}"

# ------------------------------------------------------------------------------ validation

check() { [[ $2 =~ $3 ]] || die "$1 '$2' is not valid: $4"; } # check WHAT VALUE REGEX RULE
whole() { check "$1" "$2" '^[0-9]+$' "a whole number"; }
no_userinfo() {
  [[ ! $2 =~ ^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@ ]] ||
    die "$1 holds credentials (user:password@host): pass the URI without them and keep them in Secret Manager:
  --mlflow-tracking-token-secret SECRET, or --mlflow-tracking-username-secret and --mlflow-tracking-password-secret"
}
validate() {
  local name pubsub_rule='3-255 characters: letters, digits, - _ . ~ + %, starting with a letter, not with goog'
  check project "$PROJECT_ID" '^([a-z][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$' "6-30 characters: a-z, 0-9, -"
  check region "$REGION" '^[a-z]+-[a-z]+[0-9]+$' "a region such as europe-west1"
  check "function name" "$FUNCTION_NAME" '^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$' "1-49 characters: a-z, 0-9, -, starting with a letter"
  for name in INPUT_TOPIC OUTPUT_TOPIC DEAD_LETTER_TOPIC OUTPUT_SUBSCRIPTION DEAD_LETTER_SUBSCRIPTION PUSH_SUBSCRIPTION; do
    check "$name" "${!name}" '^[A-Za-z][-A-Za-z0-9._~+%]{2,254}$' "$pubsub_rule"
    [[ ${!name} != goog* ]] || die "$name '${!name}' is not valid: $pubsub_rule"
  done
  for name in SERVICE_ACCOUNT INVOKER_SERVICE_ACCOUNT; do
    check "$name" "${!name}" '^[a-z][-a-z0-9]{4,28}[a-z0-9]$' "6-30 characters: a-z, 0-9, - (set --${name//_/-})"
  done
  [[ -n $BUILD_SERVICE_ACCOUNT ]] || check "build service account" "$FUNCTION_NAME-build" \
    '^[a-z][-a-z0-9]{4,28}[a-z0-9]$' "6-30 characters (set --build-service-account)"
  check repository "$DOCKER_REPOSITORY" '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$' "a-z, 0-9, -"
  [[ -z $MODEL_BUCKET ]] || check bucket "${MODEL_BUCKET#gs://}" '^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$' "a bucket name"
  check "base image" "$BASE_IMAGE" '^[a-z0-9][-a-z0-9./:@_]*$' "e.g. python312"
  for name in TOKEN_SECRET USERNAME_SECRET PASSWORD_SECRET; do
    [[ -z ${!name} ]] || check "secret" "${!name}" '^[A-Za-z0-9_-]{1,255}(:([1-9][0-9]*|latest))?$' "SECRET or SECRET:VERSION"
  done
  for name in MAX_INSTANCES MIN_INSTANCES CONCURRENCY MAX_DELIVERY_ATTEMPTS MIN_RETRY_DELAY \
    MAX_RETRY_DELAY VERIFY_TIMEOUT LOG_LIMIT DEPLOY_RETRY_ATTEMPTS DEPLOY_RETRY_DELAY_SECONDS \
    DEPLOY_VERIFY_POLL_SECONDS; do
    whole "$name" "${!name}"
  done
  [[ -z $MODEL_REFRESH_SECONDS ]] || whole MODEL_REFRESH_SECONDS "$MODEL_REFRESH_SECONDS"
  TIMEOUT=${TIMEOUT%s} && whole timeout "$TIMEOUT"
  # Pub/Sub's limits: a push waits at most 600 s, 5-100 attempts, delays up to 600 s.
  ((TIMEOUT >= 1 && TIMEOUT <= 600)) || die "--timeout must be 1 to 600 seconds (a push waits 600 s at most)"
  : "${ACK_DEADLINE:=$((TIMEOUT > FILE_ACK_DEADLINE_SECONDS ? TIMEOUT : FILE_ACK_DEADLINE_SECONDS))}"
  whole "ack deadline" "$ACK_DEADLINE"
  ((ACK_DEADLINE >= TIMEOUT && ACK_DEADLINE >= 10 && ACK_DEADLINE <= 600)) ||
    die "--ack-deadline must be 10-600 seconds and at least --timeout ($TIMEOUT)"
  ((MAX_DELIVERY_ATTEMPTS >= 5 && MAX_DELIVERY_ATTEMPTS <= 100)) || die "--max-delivery-attempts must be 5 to 100"
  ((MIN_RETRY_DELAY <= MAX_RETRY_DELAY && MAX_RETRY_DELAY <= 600)) ||
    die "retry delays must satisfy --min-retry-delay <= --max-retry-delay <= 600"
  [[ $DEAD_LETTER_RETENTION =~ ^([0-9]+)([mhd])$ ]] || die "--dead-letter-retention must be like 7d, 12h or 30m"
  local -A unit=([m]=60 [h]=3600 [d]=86400)
  RETENTION_SECONDS=$((BASH_REMATCH[1] * unit[${BASH_REMATCH[2]}]))
  ((RETENTION_SECONDS >= 600 && RETENTION_SECONDS <= 2678400)) || die "--dead-letter-retention must be 10m to 31d"
  ((MIN_INSTANCES <= MAX_INSTANCES)) || die "--min-instances is above --max-instances"
  case $BILLING in request | instance) ;; *) die "--billing must be request or instance" ;; esac
  case $INGRESS in internal | all) ;; *) die "--ingress must be internal or all" ;; esac
  check memory "$MEMORY" '^[1-9][0-9]*(Mi|Gi)$' "e.g. 512Mi or 2Gi"
  # https://cloud.google.com/run/docs/configuring/services/cpu: below 1 vCPU, concurrency must be 1
  # and billing request-based; above 1, whole vCPUs only.
  check cpu "$CPU" '^(0\.[0-9]*[1-9]|[1-8])$' "0.08 to 1 in fractions, or 1 to 8"
  if [[ $CPU == 0.* ]] && ((CONCURRENCY > 1)) || [[ $CPU == 0.* && $BILLING == instance ]]; then
    die "--cpu below 1 needs --concurrency 1 and --billing request"
  fi
  ((CONCURRENCY >= 1 && CONCURRENCY <= 1000)) || die "--concurrency must be 1 to 1000"
  [[ $MODEL_URI == "" || $MODEL_URI =~ ^[a-zA-Z][a-zA-Z0-9+.-]*:/ ]] ||
    die "--model-uri '$MODEL_URI' is not a URI the cloud can reach (gs://, models:/, runs:/ ...)"
  no_userinfo --model-uri "$MODEL_URI"
  no_userinfo --mlflow-tracking-uri "$MLFLOW_TRACKING_URI"
  local pair
  for pair in ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}; do
    [[ $pair =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$pair'"
    case ${pair%%=*} in
      MLFLOW_TRACKING_TOKEN | MLFLOW_TRACKING_USERNAME | MLFLOW_TRACKING_PASSWORD)
        name=${pair%%=*} && name=${name#MLFLOW_TRACKING_}
        die "${pair%%=*} must not be a plain environment value: keep it in Secret Manager and pass --mlflow-tracking-${name,,}-secret" ;;
      MODEL_URI | PROJECT_ID | PUBLISH_STREAM | DEAD_LETTER_STREAM | MODEL_NAME | THREADS | \
        SOURCE_SUBSCRIPTION | PUBLISH_MAX_RPCS_IN_FLIGHT | MLFLOW_ALLOW_PICKLE_DESERIALIZATION | \
        MODEL_VERSION | MODEL_REFRESH_SECONDS | MLFLOW_TRACKING_URI)
        die "${pair%%=*} is set by deploy.sh from its own flags (see --help)" ;;
    esac
  done
  [[ -z $TOKEN_SECRET || -z $USERNAME_SECRET$PASSWORD_SECRET ]] ||
    die "MLflow authenticates with a token or with a username and password, not both"
  [[ -z $USERNAME_SECRET$PASSWORD_SECRET || (-n $USERNAME_SECRET && -n $PASSWORD_SECRET) ]] ||
    die "--mlflow-tracking-username-secret and --mlflow-tracking-password-secret go together"
}
validate

P=(--project="$PROJECT_ID")
FN_EMAIL="$SERVICE_ACCOUNT@$PROJECT_ID.iam.gserviceaccount.com"
INVOKER_EMAIL="$INVOKER_SERVICE_ACCOUNT@$PROJECT_ID.iam.gserviceaccount.com"
FN_MEMBER="serviceAccount:$FN_EMAIL" INVOKER_MEMBER="serviceAccount:$INVOKER_EMAIL"
if [[ -z $BUILD_SERVICE_ACCOUNT ]]; then
  BUILD_SA_MANAGED=1 BUILD_EMAIL="$FUNCTION_NAME-build@$PROJECT_ID.iam.gserviceaccount.com"
else
  BUILD_SA_MANAGED=0 BUILD_EMAIL=$BUILD_SERVICE_ACCOUNT
  [[ $BUILD_EMAIL == *@* ]] || BUILD_EMAIL="$BUILD_EMAIL@$PROJECT_ID.iam.gserviceaccount.com"
fi
BUILD_MEMBER="serviceAccount:$BUILD_EMAIL"
LABELS="$MANAGED_MARK,deploy-sh-function=$FUNCTION_NAME"
# The description that marks deploy.sh's service accounts (they have no labels).
SA_MARK="$MANAGED_MARK deploy-sh-function=$FUNCTION_NAME"
PUSH_PATH="projects/$PROJECT_ID/subscriptions/$PUSH_SUBSCRIPTION"
# The bucket `gcloud run deploy --source` uploads to (googlecloudsdk/command_lib/run/sourcedeploys/
# sources.py). deploy.sh creates it, so the build may read this bucket and no other.
SAFE_PROJECT=${PROJECT_ID//:/_} && SAFE_PROJECT=${SAFE_PROJECT//./_}
SOURCES_BUCKET="run-sources-${SAFE_PROJECT//google/elgoog}-$REGION"
LEDGER_URL="gs://$SOURCES_BUCKET/deploy-sh/$FUNCTION_NAME/grants.tsv"
# Secrets as ENV=SECRET:VERSION (MLflow's own variables; version default: latest).
SECRET_ENV=()
[[ -z $TOKEN_SECRET ]] || SECRET_ENV+=("MLFLOW_TRACKING_TOKEN=$TOKEN_SECRET")
[[ -z $USERNAME_SECRET ]] || SECRET_ENV+=("MLFLOW_TRACKING_USERNAME=$USERNAME_SECRET" "MLFLOW_TRACKING_PASSWORD=$PASSWORD_SECRET")
for i in "${!SECRET_ENV[@]}"; do [[ ${SECRET_ENV[i]#*=} == *:* ]] || SECRET_ENV[i]+=:latest; done
MODEL_BUCKET=${MODEL_BUCKET#gs://}
if [[ -z $MODEL_BUCKET && $MODEL_URI == gs://* ]]; then MODEL_BUCKET=${MODEL_URI#gs://} && MODEL_BUCKET=${MODEL_BUCKET%%/*}; fi

WORK_DIR=$(mktemp -d)
VERIFY_SUBSCRIPTIONS=()
cleanup() { # verify's subscriptions, if it did not get to delete them (they expire within a day)
  is_dry_run || for sub in ${VERIFY_SUBSCRIPTIONS[@]+"${VERIFY_SUBSCRIPTIONS[@]}"}; do
    gcloud pubsub subscriptions delete "$sub" "${P[@]}" --quiet </dev/null >/dev/null 2>&1 || true
  done
  rm -rf "$WORK_DIR"
}
trap cleanup EXIT
cd "$SCRIPT_DIR" # --source=. and the runtime files are relative to the repository

# ------------------------------------------------------------------------------- resources

enable_apis() {
  local api missing=() apis=("${REQUIRED_APIS[@]}")
  ((${#SECRET_ENV[@]} == 0)) || apis+=(secretmanager.googleapis.com)
  query gcloud services list --enabled "${P[@]}" --format='value(config.name)' || true
  ENABLED_APIS=$QUERY_OUT
  for api in "${apis[@]}"; do grep -Fxq "$api" <<<"$ENABLED_APIS" || missing+=("$api"); done
  if ((${#missing[@]} > 0)); then run "enable ${missing[*]}" gcloud services enable "${missing[@]}" "${P[@]}"; else ok "APIs enabled"; fi
}

project_number() {
  if query gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)' && [[ -n $QUERY_OUT ]]; then
    PROJECT_NUMBER=$QUERY_OUT
  else
    is_dry_run || die "could not read the number of project $PROJECT_ID"
    PROJECT_NUMBER=PROJECT_NUMBER
  fi
  AGENT_MEMBER="serviceAccount:service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
}

ensure_sources_bucket() {
  if query gcloud storage buckets describe "gs://$SOURCES_BUCKET" "${P[@]}" --format='value(name)'; then
    ok "bucket gs://$SOURCES_BUCKET exists"
    return 0
  fi
  # As gcloud would create it (uniform access), with public access prevented.
  run "create the sources bucket gs://$SOURCES_BUCKET" gcloud storage buckets create "gs://$SOURCES_BUCKET" \
    --location="$REGION" --uniform-bucket-level-access --public-access-prevention "${P[@]}"
  run "label gs://$SOURCES_BUCKET" gcloud storage buckets update "gs://$SOURCES_BUCKET" \
    --update-labels="$MANAGED_MARK" "${P[@]}"
}

ensure_topic() {
  if query gcloud pubsub topics describe "$1" "${P[@]}" --format='value(name)'; then
    ok "topic $1 exists"
  else
    run "create topic $1" gcloud pubsub topics create "$1" --labels="$LABELS" "${P[@]}"
  fi
}

# ensure_pull_subscription NAME TOPIC [RETENTION]: never expires (Pub/Sub deletes a subscription
# after 31 idle days by default, and consumers or dead letters would then be lost), keeps unread
# messages RETENTION if given (https://cloud.google.com/pubsub/docs/subscription-properties).
ensure_pull_subscription() {
  local name=$1 topic=$2 retention=${3:-} settings=(--expiration-period=never)
  [[ -z $retention ]] || settings+=(--message-retention-duration="$retention")
  if query gcloud pubsub subscriptions describe "$name" "${P[@]}" \
    --format='value[separator="|"](topic,expirationPolicy.ttl,messageRetentionDuration)'; then
    [[ ${QUERY_OUT%%|*} == "projects/$PROJECT_ID/topics/$topic" ]] ||
      die "subscription $name is attached to ${QUERY_OUT%%|*}, not topic $topic: choose another name"
    local live=${QUERY_OUT#*|}
    if [[ ${live%%|*} == "" && (-z $retention || ${live#*|} == "${RETENTION_SECONDS}s") ]]; then
      ok "subscription $name never expires${retention:+, keeps messages $retention}"
    else
      log "    drift: subscription $name: expiry '${live%%|*}', retention '${live#*|}'"
      run "subscription $name: never expire${retention:+, keep $retention}" \
        gcloud pubsub subscriptions update "$name" "${settings[@]}" "${P[@]}"
    fi
  else
    run "create subscription $name on $topic" gcloud pubsub subscriptions create "$name" \
      --topic="$topic" "${settings[@]}" --labels="$LABELS" "${P[@]}"
  fi
}

ensure_service_account() { # NAME EMAIL PURPOSE
  if query gcloud iam service-accounts describe "$2" "${P[@]}" --format='value(email)'; then
    ok "service account $2 exists"
  else
    run "create service account $1" gcloud iam service-accounts create "$1" \
      --display-name="$FUNCTION_NAME $3" --description="$3 of $FUNCTION_NAME; $SA_MARK" "${P[@]}"
  fi
}

# The images' repository is deploy.sh's own, so the build's writer grant is on it alone (without
# --image, gcloud would create `cloud-run-source-deploy`); its cleanup policy keeps it small
# (https://cloud.google.com/artifact-registry/docs/repositories/cleanup-policy).
ensure_repository() {
  local cleanup=(gcloud artifacts repositories set-cleanup-policies "$DOCKER_REPOSITORY"
    --location="$REGION" --policy="$CLEANUP_POLICY_FILE" --no-dry-run "${P[@]}")
  if query gcloud artifacts repositories describe "$DOCKER_REPOSITORY" --location="$REGION" "${P[@]}" \
    --format='value[separator="|"](cleanupPolicies.keep-recent.mostRecentVersions.keepCount,cleanupPolicies.delete-old.condition.olderThan,cleanupPolicyDryRun)'; then
    if [[ ${QUERY_OUT%|*} == "$CLEANUP_POLICY_STATE" && ${QUERY_OUT##*|} != True ]]; then
      ok "repository $DOCKER_REPOSITORY has its cleanup policy"
    else
      run "cleanup policy of repository $DOCKER_REPOSITORY" "${cleanup[@]}"
    fi
  else
    run "create image repository $DOCKER_REPOSITORY" gcloud artifacts repositories create \
      "$DOCKER_REPOSITORY" --repository-format=docker --location="$REGION" --labels="$LABELS" "${P[@]}"
    run "cleanup policy of repository $DOCKER_REPOSITORY" "${cleanup[@]}"
  fi
}

check_secrets_and_build_account() {
  local pair secret
  for pair in ${SECRET_ENV[@]+"${SECRET_ENV[@]}"}; do
    secret=${pair#*=} && secret=${secret%%:*}
    query gcloud secrets describe "$secret" "${P[@]}" --format='value(name)' || is_dry_run ||
      die "secret $secret does not exist in project $PROJECT_ID; create it with
  printf %s \"\$VALUE\" | gcloud secrets create $secret --data-file=- --project=$PROJECT_ID"
  done
  ((BUILD_SA_MANAGED == 1)) || query gcloud iam service-accounts describe "$BUILD_EMAIL" "${P[@]}" \
    --format='value(email)' || is_dry_run || die "build service account $BUILD_EMAIL not found"
}

# MLflow refuses pickles when MLFLOW_ALLOW_PICKLE_DESERIALIZATION is false (MLflow's default is
# true). For a gs:// model, the function gets exactly what the model's MLmodel needs: true only
# for a pickle or cloudpickle model (whoever can write that bucket can then run code in the
# function; docs/models.md). A registry URI can point to another model tomorrow: you decide.
pickle_setting() {
  [[ -z $ALLOW_PICKLE ]] || return 0
  if query gcloud storage cat "${MODEL_URI%/}/MLmodel" "${P[@]}"; then
    if grep -Eq '^\s*(serialization_format:\s*(cloud)?pickle|python_model:)' <<<"$QUERY_OUT"; then
      ALLOW_PICKLE=true
      log "    note: the model is a pickle: whoever can write gs://$MODEL_BUCKET can run code in the function"
    else
      ALLOW_PICKLE=false
    fi
  else
    is_dry_run || die "no MLflow model at $MODEL_URI (its MLmodel file is missing)"
    ALLOW_PICKLE=FROM_MLMODEL
  fi
}

# ------------------------------------------------------------------------------ the service

cpu_millis() { # 1 -> 1000, 0.5 -> 500, 1000m -> 1000
  local value=$1
  if [[ $value == *m ]]; then echo "${value%m}"; elif [[ $value == *.* ]]; then
    local fraction=${value#*.}000
    echo $((10#${value%%.*} * 1000 + 10#${fraction:0:3}))
  else echo $((value * 1000)); fi
}
mebibytes() { [[ $1 == *Gi ]] && echo $((${1%Gi} * 1024)) || echo "${1%Mi}"; }

# The function's environment (docs/design.md, "Configuration").
function_env() {
  ENV_VARS=("MODEL_URI=$MODEL_URI" "PROJECT_ID=$PROJECT_ID" "PUBLISH_STREAM=$OUTPUT_TOPIC"
    "DEAD_LETTER_STREAM=$DEAD_LETTER_TOPIC" "MODEL_NAME=$MODEL_NAME"
    "THREADS=$CONCURRENCY" # functions-framework's gunicorn threads: one per concurrent request
    "PUBLISH_MAX_RPCS_IN_FLIGHT=${PUBLISH_RPCS_FOR_BILLING[$BILLING]}"
    # A raw push loses its `subscription` field in functions-framework's conversion: dead letters'
    # dlq_source_subscription comes from here.
    "SOURCE_SUBSCRIPTION=$PUSH_PATH" "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=$ALLOW_PICKLE")
  [[ -z $MODEL_VERSION ]] || ENV_VARS+=("MODEL_VERSION=$MODEL_VERSION")
  [[ -z $MODEL_REFRESH_SECONDS ]] || ENV_VARS+=("MODEL_REFRESH_SECONDS=$MODEL_REFRESH_SECONDS")
  [[ -z $MLFLOW_TRACKING_URI ]] || ENV_VARS+=("MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI")
  ENV_VARS+=(${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"})
}

# One --set-env-vars value, with a delimiter no value holds (`gcloud topic escaping`).
env_vars_flag() {
  local delimiter pair joined
  for delimiter in '|' ';' '#' '!' '~~'; do
    joined=""
    for pair in "${ENV_VARS[@]}"; do
      [[ $pair == *"$delimiter"* ]] && continue 2
      [[ $pair != *$'\n'* ]] || die "environment values cannot hold newlines: ${pair%%=*}"
      joined+="${joined:+$delimiter}$pair"
    done
    printf -- '--set-env-vars=^%s^%s' "$delimiter" "$joined"
    return 0
  done
  die "the environment variables use every delimiter deploy.sh knows; simplify their values"
}

source_fingerprint() { # the runtime files and the build settings, as a label value
  {
    for file in "${RUNTIME_FILES[@]}"; do printf '%s\0' "$file" && cat "$file" && printf '\0'; done
    printf '%s\0' "$BASE_IMAGE" "$ENTRY_POINT" "$BUILD_EMAIL" "$IMAGE"
  } | { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi; } | cut -c1-40
}

# DESIRED: the service's settings, normalized as read_service normalizes the live ones.
declare -A DESIRED=() LIVE=()
plan_service() {
  function_env
  IMAGE="$REGION-docker.pkg.dev/$PROJECT_ID/$DOCKER_REPOSITORY/$FUNCTION_NAME"
  DESIRED=([service-account]=$FN_EMAIL [cpu]=$(cpu_millis "$CPU") [memory]=$(mebibytes "$MEMORY")
    [concurrency]=$CONCURRENCY [timeout]=$TIMEOUT [min-instances]=$MIN_INSTANCES
    [max-instances]=$MAX_INSTANCES [cpu-boost]=$CPU_BOOST [ingress]=$INGRESS
    [cpu-throttling]=$([[ $BILLING == request ]] && echo true || echo false)
    [label:managed-by]=deploy-sh [label:deploy-sh-function]=$FUNCTION_NAME
    [label:deploy-sh-source]=$(source_fingerprint))
  local pair
  for pair in "${ENV_VARS[@]}"; do DESIRED[env:${pair%%=*}]=${pair#*=}; done
  for pair in ${SECRET_ENV[@]+"${SECRET_ENV[@]}"}; do DESIRED[secret:${pair%%=*}]=${pair#*=}; done
  local throttle=--cpu-throttling boost=--cpu-boost secrets=--clear-secrets
  [[ $BILLING == request ]] || throttle=--no-cpu-throttling
  [[ $CPU_BOOST == true ]] || boost=--no-cpu-boost
  ((${#SECRET_ENV[@]} == 0)) || secrets=--set-secrets=$(IFS=, && echo "${SECRET_ENV[*]}")
  ENV_FLAG=$(env_vars_flag)
  SETTINGS_FLAGS=(--service-account="$FN_EMAIL" --cpu="$CPU" --memory="$MEMORY"
    --concurrency="$CONCURRENCY" --timeout="$TIMEOUT" --min-instances="$MIN_INSTANCES"
    --max-instances="$MAX_INSTANCES" --ingress="$INGRESS" "$throttle" "$boost" "$ENV_FLAG"
    "$secrets" --update-labels="$LABELS,deploy-sh-source=${DESIRED[label:deploy-sh-source]}")
}

# read_service: LIVE holds the service's settings and SERVICE_URL its URL; 1 if it does not exist.
read_service() {
  LIVE=() SERVICE_URL=""
  query gcloud run services describe "$FUNCTION_NAME" --region="$REGION" "${P[@]}" \
    --format='flattened(metadata,spec,status)' || return 1
  local line key value index
  local -A names=() values=() secrets=() versions=()
  LIVE=([min-instances]=0 [cpu-throttling]=true [cpu-boost]=false [ingress]=all)
  while IFS= read -r line; do
    [[ $line == *:* ]] || continue
    key=${line%%:*} value=${line#*:} && value=${value#"${value%%[! ]*}"}
    index=${key#*env\[} && index=${index%%\]*}
    case $key in
      status.url) SERVICE_URL=$value ;;
      metadata.labels.managed-by | metadata.labels.deploy-sh-*) LIVE[label:${key#metadata.labels.}]=$value ;;
      metadata.annotations.run.googleapis.com/ingress) LIVE[ingress]=$value ;;
      spec.template.metadata.annotations.autoscaling.knative.dev/minScale) LIVE[min-instances]=$value ;;
      spec.template.metadata.annotations.autoscaling.knative.dev/maxScale) LIVE[max-instances]=$value ;;
      spec.template.metadata.annotations.run.googleapis.com/cpu-throttling) LIVE[cpu-throttling]=${value,,} ;;
      spec.template.metadata.annotations.run.googleapis.com/startup-cpu-boost) LIVE[cpu-boost]=${value,,} ;;
      spec.template.spec.serviceAccountName) LIVE[service-account]=$value ;;
      spec.template.spec.containerConcurrency) LIVE[concurrency]=$value ;;
      spec.template.spec.timeoutSeconds) LIVE[timeout]=$value ;;
      *.containers\[0\].resources.limits.cpu) LIVE[cpu]=$(cpu_millis "$value") ;;
      *.containers\[0\].resources.limits.memory) LIVE[memory]=$(mebibytes "$value") ;;
      *.containers\[0\].env\[*\].name) names[$index]=$value ;;
      *.containers\[0\].env\[*\].value) values[$index]=$value ;;
      *.containers\[0\].env\[*\].valueFrom.secretKeyRef.name) secrets[$index]=$value ;;
      *.containers\[0\].env\[*\].valueFrom.secretKeyRef.key) versions[$index]=$value ;;
    esac
  done <<<"$QUERY_OUT"
  for index in "${!names[@]}"; do
    if [[ -n ${secrets[$index]:-} ]]; then
      LIVE[secret:${names[$index]}]=${secrets[$index]}:${versions[$index]:-latest}
    else
      LIVE[env:${names[$index]}]=${values[$index]:-}
    fi
  done
}

# service_drift: prints what differs between LIVE and DESIRED, one line each.
service_drift() {
  local key
  for key in $(printf '%s\n' "${!DESIRED[@]}" "${!LIVE[@]}" | sort -u); do
    [[ ${LIVE[$key]-<unset>} == "${DESIRED[$key]-<unset>}" ]] ||
      printf '%s: %s -> %s\n' "$key" "${LIVE[$key]-<unset>}" "${DESIRED[$key]-<unset>}"
  done
}

check_upload_files() {
  local file expected
  for file in "${RUNTIME_FILES[@]}"; do [[ -f $file ]] || die "runtime file $file is missing"; done
  # What gcloud would really upload after .gcloudignore (local; reads no cloud).
  query gcloud meta list-files-for-upload . || { is_dry_run && return 0; } || die "gcloud cannot list the upload"
  expected=$(printf '%s\n' "${RUNTIME_FILES[@]}" | sort)
  [[ $(sort <<<"$QUERY_OUT") == "$expected" ]] ||
    die "refusing to deploy: .gcloudignore would upload $(sort <<<"$QUERY_OUT" | tr '\n' ' ')instead of exactly the runtime files"
}

# The function as a Cloud Run function: a source change (or a new service, or --force) is a
# deploy, which builds; a settings change is `run services update`, which does not
# (https://cloud.google.com/run/docs/deploy-functions, surface/run/deploy.py in gcloud).
ensure_service() {
  plan_service
  local drift="" exists=0
  if read_service; then
    exists=1 drift=$(service_drift)
    if [[ -z $drift && $FORCE != 1 ]]; then
      ok "service $FUNCTION_NAME has this source and every setting"
      return 0
    fi
    [[ -z $drift ]] || log "    drift: ${drift//$'\n'/$'\n'    drift: }"
  fi
  if ((exists == 0)) || [[ $FORCE == 1 || $drift == *label:deploy-sh-source* ]]; then
    check_upload_files
    is_dry_run || log "    (building and deploying takes a few minutes)"
    ((FRESH_GRANTS == 0)) || RETRY_ALSO=("${FRESH_GRANT_ERRORS[@]}")
    run "deploy the function $FUNCTION_NAME" gcloud run deploy "$FUNCTION_NAME" --source=. \
      --function="$ENTRY_POINT" --base-image="$BASE_IMAGE" --image="$IMAGE" \
      --build-service-account="projects/$PROJECT_ID/serviceAccounts/$BUILD_EMAIL" \
      --no-allow-unauthenticated "${SETTINGS_FLAGS[@]}" --region="$REGION" "${P[@]}"
    RETRY_ALSO=()
    read_service || is_dry_run || die "service $FUNCTION_NAME not found after deploying it"
  else
    run "put the settings of $FUNCTION_NAME back" gcloud run services update "$FUNCTION_NAME" \
      "${SETTINGS_FLAGS[@]}" --region="$REGION" "${P[@]}"
  fi
  [[ -n $SERVICE_URL ]] || SERVICE_URL=SERVICE_URL
}

# ------------------------------------------------------------------ Stream A's push subscription

PUSH_FORMAT='value[separator="|"](topic,ackDeadlineSeconds,retryPolicy.minimumBackoff,retryPolicy.maximumBackoff,expirationPolicy.ttl,pushConfig.pushEndpoint,pushConfig.oidcToken.serviceAccountEmail,pushConfig.oidcToken.audience,deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts)'
read_push_subscription() {
  PUSH_LIVE=()
  query gcloud pubsub subscriptions describe "$PUSH_SUBSCRIPTION" "${P[@]}" --format="$PUSH_FORMAT" || return 1
  IFS='|' read -r -a PUSH_LIVE <<<"$QUERY_OUT|"
}

# Created before the function exists, as a plain subscription holding Stream A's messages (nothing
# pulls it, so nothing counts as a delivery attempt), without a dead-letter policy; it becomes a
# push subscription once the invoker may call the service. It is never deleted or re-created.
create_push_subscription() {
  if read_push_subscription; then
    [[ ${PUSH_LIVE[0]} == "projects/$PROJECT_ID/topics/$INPUT_TOPIC" ]] ||
      die "subscription $PUSH_SUBSCRIPTION is attached to ${PUSH_LIVE[0]}, not $INPUT_TOPIC: pass --push-subscription"
    ok "push subscription $PUSH_SUBSCRIPTION exists"
  else
    run "create Stream A's subscription $PUSH_SUBSCRIPTION (push comes later)" \
      gcloud pubsub subscriptions create "$PUSH_SUBSCRIPTION" --topic="$INPUT_TOPIC" \
      --ack-deadline="$ACK_DEADLINE" --min-retry-delay="${MIN_RETRY_DELAY}s" \
      --max-retry-delay="${MAX_RETRY_DELAY}s" --expiration-period=never --labels="$LABELS" "${P[@]}"
    read_push_subscription || PUSH_LIVE=("projects/$PROJECT_ID/topics/$INPUT_TOPIC")
  fi
}

# Push endpoint: the service URL with Stream A's topic as the path, which functions-framework
# reads into the CloudEvent's source; the OIDC audience is then set to the service URL, which is
# what Cloud Run checks (https://cloud.google.com/run/docs/triggering/pubsub-push).
update_push_subscription() { # [dead-letter]: also set the dead-letter policy
  local flags=() wanted=("$ACK_DEADLINE" "${MIN_RETRY_DELAY}s" "${MAX_RETRY_DELAY}s" ""
    "$SERVICE_URL/projects/$PROJECT_ID/topics/$INPUT_TOPIC" "$INVOKER_EMAIL" "$SERVICE_URL"
    "projects/$PROJECT_ID/topics/$DEAD_LETTER_TOPIC" "$MAX_DELIVERY_ATTEMPTS")
  local live=("${PUSH_LIVE[@]:1}") setting=("ack deadline" "min retry delay" "max retry delay"
    expiry endpoint "push identity" audience "dead-letter topic" "max delivery attempts") i
  for i in "${!wanted[@]}"; do
    ((i < 7)) || [[ ${1:-} == dead-letter || -n ${live[7]:-} ]] || continue
    [[ ${live[i]:-} != "${wanted[i]}" ]] || continue
    [[ -z ${live[i]:-} ]] || log "    drift: push subscription $PUSH_SUBSCRIPTION ${setting[i]}: ${live[i]} -> ${wanted[i]}"
    case $i in
      0) flags+=(--ack-deadline="$ACK_DEADLINE") ;;
      1 | 2) flags+=(--min-retry-delay="${MIN_RETRY_DELAY}s" --max-retry-delay="${MAX_RETRY_DELAY}s") ;;
      3) flags+=(--expiration-period=never) ;;
      4 | 5 | 6) flags+=(--push-endpoint="${wanted[4]}" --push-auth-service-account="$INVOKER_EMAIL"
        --push-auth-token-audience="$SERVICE_URL") ;;
      7 | 8) flags+=(--dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS") ;;
    esac
  done
  if ((${#flags[@]} == 0)); then
    ok "push subscription $PUSH_SUBSCRIPTION has every setting"
    return 0
  fi
  mapfile -t flags < <(printf '%s\n' "${flags[@]}" | awk '!seen[$0]++')
  run "settings of push subscription $PUSH_SUBSCRIPTION" gcloud pubsub subscriptions update \
    "$PUSH_SUBSCRIPTION" "${flags[@]}" "${P[@]}"
}

# ---------------------------------------------------------------------------------- deploy

# The earlier version of this project deployed a Cloud Functions (2nd gen) function with an
# Eventarc trigger under the same name. `gcloud run deploy` on it would update the function's
# own service (and a later `gcloud functions delete` would delete it), so it is detached first,
# once Stream A's new subscription already holds every new message (docs/deploy.md).
check_earlier_version() {
  EARLIER_TRIGGER=""
  grep -Fxq cloudfunctions.googleapis.com <<<"$ENABLED_APIS" || return 0
  query gcloud functions describe "$FUNCTION_NAME" --region="$REGION" "${P[@]}" \
    --format='value(eventTrigger.trigger)' || return 0
  EARLIER_TRIGGER=${QUERY_OUT:-none}
  log "    the earlier version (a Cloud Functions function with Eventarc trigger $EARLIER_TRIGGER) is moved over"
}

cmd_deploy() {
  [[ -n $MODEL_URI ]] || die "--model-uri is required, e.g. gs://BUCKET/1/RUN_ID/artifacts/model"
  [[ $MODEL_URI == gs://* || -n $ALLOW_PICKLE ]] ||
    die "say whether the function may load pickled models from $MODEL_URI (a registry alias can
  move to any model later): --allow-pickle for pickle/cloudpickle models (whoever can register
  a model version can then run code in the function), --no-allow-pickle for skops models"
  log "Deploying $FUNCTION_NAME to project $PROJECT_ID, region $REGION: $INPUT_TOPIC -> $PUSH_SUBSCRIPTION -> function -> $OUTPUT_TOPIC"
  log "  model $MODEL_URI; $CPU vCPU, $MEMORY, $CONCURRENCY requests per instance, $MIN_INSTANCES-$MAX_INSTANCES instances, $BILLING billing"
  FRESH_GRANTS=0
  step "APIs, sources bucket, grant ledger"
  enable_apis
  project_number
  ensure_sources_bucket
  check_secrets_and_build_account
  plan_grants
  ledger_read
  ledger_write ${LEDGER[@]+"${LEDGER[@]}"} "$(planned_ledger_lines)"
  pickle_setting

  step "Pub/Sub topics and pull subscriptions"
  ensure_topic "$INPUT_TOPIC" && ensure_topic "$OUTPUT_TOPIC" && ensure_topic "$DEAD_LETTER_TOPIC"
  ensure_pull_subscription "$OUTPUT_SUBSCRIPTION" "$OUTPUT_TOPIC"
  ensure_pull_subscription "$DEAD_LETTER_SUBSCRIPTION" "$DEAD_LETTER_TOPIC" "$DEAD_LETTER_RETENTION"

  step "Identities and their grants"
  ensure_service_account "$SERVICE_ACCOUNT" "$FN_EMAIL" "runtime identity"
  ensure_service_account "$INVOKER_SERVICE_ACCOUNT" "$INVOKER_EMAIL" "push identity"
  ((BUILD_SA_MANAGED == 0)) || ensure_service_account "$FUNCTION_NAME-build" "$BUILD_EMAIL" "build identity"
  ensure_repository
  grant_phase runtime && grant_phase build
  if ! has_binding service-account "$INVOKER_EMAIL" roles/iam.serviceAccountTokenCreator "$AGENT_MEMBER"; then
    # The Pub/Sub service agent may not exist yet in a new project: this creates or returns it.
    run "make sure the Pub/Sub service agent exists" gcloud beta services identity create \
      --service=pubsub.googleapis.com "${P[@]}"
  fi
  grant_phase agent

  step "Stream A's subscription, then the function"
  check_earlier_version
  create_push_subscription
  grant_phase subscription
  [[ -z $EARLIER_TRIGGER ]] || run "detach $FUNCTION_NAME from Cloud Functions" \
    gcloud functions detach "$FUNCTION_NAME" --region="$REGION" "${P[@]}"
  ensure_service
  grant_phase service
  update_push_subscription
  revoke_unplanned

  step "Deployed"
  if [[ -z ${PUSH_LIVE[8]:-} ]]; then
    # Dead-lettering is armed only once a ride went through: until the invoker's grant has reached
    # Pub/Sub, pushes are refused, and with the policy set those rides would be dead-lettered.
    log "    the dead-letter policy is set once a ride has gone through (verify)"
    cmd_verify
    update_push_subscription dead-letter
  elif [[ $VERIFY == yes || ($VERIFY == auto && $CHANGES -gt 0) ]]; then
    cmd_verify
  else
    ok "nothing changed, so nothing is published (--verify to check anyway)"
  fi
  [[ -z $EARLIER_TRIGGER ]] || log "The earlier version's Eventarc trigger still pushes Stream A too (duplicates, nothing lost).
Once its subscription's backlog is 0 (docs/deploy.md, \"Moving from the Eventarc version\"):
  gcloud eventarc triggers delete ${EARLIER_TRIGGER##*/} --location=$REGION --project=$PROJECT_ID"
}

# ---------------------------------------------------------------------------------- verify

# The sample ride with the attribute deploy_verify=RUN_ID, which the function copies onto its
# prediction and dead letters (consumers drop such messages). Two subscriptions of verify's own,
# made before it publishes, see only that ride: one on Stream B, one on the dead-letter topic.
cmd_verify() {
  step "Verify: a ride on $INPUT_TOPIC must come out on $OUTPUT_TOPIC"
  local run_id=${DEPLOY_VERIFY_RUN_ID:-deploy-verify-$(date +%s)-$RANDOM} sub topic
  local predictions="$FUNCTION_NAME-$run_id" rejects="$FUNCTION_NAME-$run_id-dead-letters"
  for sub in "$predictions" "$rejects"; do
    topic=$OUTPUT_TOPIC && [[ $sub == "$predictions" ]] || topic=$DEAD_LETTER_TOPIC
    VERIFY_SUBSCRIPTIONS+=("$sub")
    run "subscription $sub on $topic for this ride only" gcloud pubsub subscriptions create "$sub" \
      --topic="$topic" --message-filter="attributes.deploy_verify = \"$run_id\"" \
      --expiration-period=1d --message-retention-duration=10m --labels="$LABELS" "${P[@]}"
  done
  run "publish the sample ride $run_id" gcloud pubsub topics publish "$INPUT_TOPIC" \
    --message="{\"ride\": $SAMPLE_RIDE, \"ride_id\": \"$run_id\"}" \
    --attribute="deploy_verify=$run_id,ride_id=$run_id" "${P[@]}"
  local pull_prediction=(gcloud pubsub subscriptions pull "$predictions" --limit=1 "${P[@]}"
    --format='value(message.data.decode(base64).decode(utf-8))')
  local pull_reject=(gcloud pubsub subscriptions pull "$rejects" --limit=1 "${P[@]}"
    --format='value[separator="|"](message.messageId,message.attributes.dlq_reason,message.attributes.CloudPubSubDeadLetterSourceDeliveryCount)')
  local result="" deadline=$((SECONDS + VERIFY_TIMEOUT))
  if is_dry_run; then
    shell_quote "${pull_prediction[@]}" && shell_quote "${pull_reject[@]}"
  else
    log "    waiting up to ${VERIFY_TIMEOUT}s for the prediction (a cold start loads the model first)"
    while [[ -z $result ]]; do
      query "${pull_prediction[@]}" || die "subscription $predictions not found"
      result=$QUERY_OUT && [[ -z $result ]] || break
      query "${pull_reject[@]}" || die "subscription $rejects not found"
      [[ -z $QUERY_OUT ]] || verify_dead_letter "$run_id" "$QUERY_OUT"
      ((SECONDS < deadline)) || die "NOT VERIFIED: no prediction for ride $run_id within ${VERIFY_TIMEOUT}s.
  The function's logs: ./$SCRIPT_NAME logs --project $PROJECT_ID --region $REGION"
      sleep "$DEPLOY_VERIFY_POLL_SECONDS"
    done
  fi
  for sub in "$predictions" "$rejects"; do
    run "delete verify's subscription $sub" gcloud pubsub subscriptions delete "$sub" --quiet "${P[@]}"
  done
  VERIFY_SUBSCRIPTIONS=()
  is_dry_run && return 0
  log "VERIFIED: ride $run_id went $INPUT_TOPIC -> $FUNCTION_NAME -> $OUTPUT_TOPIC"
  printf '%s\n' "$result"
}

verify_dead_letter() { # RUN_ID ID|DLQ_REASON|DELIVERY_COUNT: fails verify, saying which kind
  local reason count=${2##*|}
  reason=${2#*|} && reason=${reason%|*}
  if [[ -n $reason ]]; then
    die "NOT VERIFIED: the function rejected ride $1 as permanently bad (dlq_reason: $reason).
  The plumbing works; the ride or the model does not fit (docs/failures.md)."
  elif [[ -n $count ]]; then
    die "NOT VERIFIED: Pub/Sub gave up on ride $1 after $count delivery attempts and forwarded it to
  $DEAD_LETTER_TOPIC itself (no dlq_reason): the function never accepted the push. Refused pushes
  (403) mean $INVOKER_EMAIL may not invoke the service (a grant missing or still propagating);
  failed ones (5xx, timeouts) are the function's errors: ./$SCRIPT_NAME logs. Fix, then verify."
  fi
  die "NOT VERIFIED: ride $1 reached $DEAD_LETTER_TOPIC without a dlq_reason or Pub/Sub's dead-letter attributes"
}

cmd_logs() {
  local logs=(gcloud run services logs read "$FUNCTION_NAME" --region="$REGION" --limit="$LOG_LIMIT" "${P[@]}")
  if is_dry_run; then shell_quote "${logs[@]}"; else "${logs[@]}" </dev/null; fi
}

# --------------------------------------------------------------------------------- destroy

# destroy_listed WHAT LIST-COMMAND... -- DELETE-COMMAND...: deletes each resource the list
# names; `{}` in the delete command stands for the name.
destroy_listed() {
  local what=$1 list=() name
  shift
  while [[ $1 != -- ]]; do list+=("$1") && shift; done
  shift
  query "${list[@]}" || true
  if is_dry_run; then QUERY_OUT=NAME && [[ $what != "service account" ]] || QUERY_OUT=ACCOUNT@$PROJECT_ID.iam.gserviceaccount.com; fi
  for name in $QUERY_OUT; do run "delete $what ${name##*/}" "${@/#\{\}/${name##*/}}"; done
}

cmd_destroy() {
  if [[ $ASSUME_YES != 1 ]] && ! is_dry_run; then
    [[ -t 0 ]] || die "destroy deletes without asking only with --yes (no terminal to ask on); nothing was deleted"
    local answer=""
    printf 'Delete what deploy.sh made for %s in project %s? Type the project id: ' "$FUNCTION_NAME" "$PROJECT_ID" >&2
    read -r answer || true
    [[ $answer == "$PROJECT_ID" ]] || die "not confirmed; nothing was deleted"
  fi
  step "Destroy $FUNCTION_NAME in $PROJECT_ID ($REGION): grants from $LEDGER_URL, resources by label"
  local line kind name role member labelled="labels.deploy-sh-function=$FUNCTION_NAME"
  ledger_read
  for line in ${LEDGER[@]+"${LEDGER[@]}"}; do
    IFS=$'\t' read -r kind name role member <<<"$line"
    revoke "$kind" "$name" "$role" "$member"
  done
  if query gcloud run services describe "$FUNCTION_NAME" --region="$REGION" "${P[@]}" --format='value(metadata.labels)' &&
    [[ $QUERY_OUT == *"$MANAGED_MARK"* ]] || is_dry_run; then
    run "delete service $FUNCTION_NAME" gcloud run services delete "$FUNCTION_NAME" --region="$REGION" --quiet "${P[@]}"
  fi
  destroy_listed subscription gcloud pubsub subscriptions list --filter="$labelled" --format='value(name)' "${P[@]}" -- \
    gcloud pubsub subscriptions delete {} --quiet "${P[@]}"
  destroy_listed topic gcloud pubsub topics list --filter="$labelled" --format='value(name)' "${P[@]}" -- \
    gcloud pubsub topics delete {} --quiet "${P[@]}"
  destroy_listed repository gcloud artifacts repositories list --location="$REGION" --filter="$labelled" \
    --format='value(name)' "${P[@]}" -- gcloud artifacts repositories delete {} --location="$REGION" --quiet "${P[@]}"
  destroy_listed "service account" gcloud iam service-accounts list --filter="description~'$SA_MARK\$'" \
    --format='value(email)' "${P[@]}" -- gcloud iam service-accounts delete {} --quiet "${P[@]}"
  # The sources bucket goes if deploy.sh made it and holds nothing but this function's files.
  local ours=0 objects="" prefix
  query gcloud storage buckets describe "gs://$SOURCES_BUCKET" --format='value(labels)' "${P[@]}" &&
    [[ $QUERY_OUT == *"$MANAGED_MARK"* ]] && ours=1
  query gcloud storage ls "gs://$SOURCES_BUCKET/**" "${P[@]}" && objects=$QUERY_OUT
  if is_dry_run || ((ours == 1)) && ! grep -v -e "/services/$FUNCTION_NAME/" -e "/deploy-sh/$FUNCTION_NAME/" <<<"$objects" | grep -q .; then
    run "delete gs://$SOURCES_BUCKET" gcloud storage rm --recursive "gs://$SOURCES_BUCKET" "${P[@]}"
  else
    for prefix in "services/$FUNCTION_NAME" "deploy-sh/$FUNCTION_NAME"; do
      grep -q "gs://$SOURCES_BUCKET/$prefix/" <<<"$objects" || continue
      run "delete gs://$SOURCES_BUCKET/$prefix" gcloud storage rm --recursive "gs://$SOURCES_BUCKET/$prefix" "${P[@]}"
    done
  fi
  step "Destroyed (enabled APIs stay enabled; resources deploy.sh did not create are kept)"
}

case $COMMAND in
  deploy) cmd_deploy ;;
  verify) cmd_verify ;;
  logs) cmd_logs ;;
  destroy) cmd_destroy ;;
esac
