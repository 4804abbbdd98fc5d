#!/usr/bin/env bash
# deploy.sh — from an empty GCP project to a verified ride-prediction deployment, unattended.
#
#   ./deploy.sh [deploy]   APIs, topics, subscriptions, service accounts (runtime, trigger, build),
#                          IAM, an image repository, the function, the trigger's subscription
#                          settings, then `verify`
#   ./deploy.sh verify     publish the tutorial's sample ride to Stream A and wait for its
#                          prediction on a subscription of its own on Stream B
#   ./deploy.sh logs       the function's recent logs
#   ./deploy.sh destroy    delete what deploy.sh created (asks first)
#
# Add --dry-run to any of them to print the gcloud commands instead of running them.
# Every step checks before it changes anything, so re-running is safe and a second run changes
# nothing. Credentials: whatever `gcloud auth login` set up; no key files. See `--help` and
# docs/deploy.md (every setting, every grant, and the documentation behind each).
set -euo pipefail

# Never a prompt: gcloud runs unattended (as in CI). Where gcloud would otherwise ask, this script
# has already created or granted what the question is about (docs/deploy.md, "No prompts").
export CLOUDSDK_CORE_DISABLE_PROMPTS=1

SCRIPT_NAME=deploy.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Requests one function instance serves at once (`gcloud functions deploy --concurrency`); the
# function's THREADS (functions-framework's gunicorn threads) is set to the same number, as
# https://cloud.google.com/functions/docs/configuring/concurrency recommends for Python. The one
# place for the default; docs/deploy.md ("Scale settings") says where the number comes from.
DEFAULT_CONCURRENCY=32

# The only files the function needs; .gcloudignore lets exactly these through, and the deploy
# step refuses to upload anything else (tests/test_packaging.py keeps the lists in sync).
RUNTIME_FILES=(features.py main.py model_loader.py publisher.py requirements.txt settings.py telemetry.py)

# The tutorial's "Before you begin" list, plus IAM for the service accounts and Cloud Resource
# Manager for the project's number and IAM policy. Secret Manager is added when secrets are used.
REQUIRED_APIS=(
  artifactregistry.googleapis.com
  cloudbuild.googleapis.com
  cloudfunctions.googleapis.com
  cloudresourcemanager.googleapis.com
  eventarc.googleapis.com
  iam.googleapis.com
  logging.googleapis.com
  pubsub.googleapis.com
  run.googleapis.com
)

# Resources deploy.sh creates carry this mark (a label, or the service account's description),
# so `destroy` removes them and leaves alone what existed before (say, the tutorial's topics).
MANAGED_LABEL_KEY=managed-by
MANAGED_LABEL_VALUE="deploy-sh"
MANAGED_MARK="${MANAGED_LABEL_KEY}=${MANAGED_LABEL_VALUE}"

# The image repository's cleanup policy (gcloud artifacts repositories set-cleanup-policies):
# keep the 5 newest images, delete the rest after 30 days. The file is read by gcloud; the
# expected state below is what Artifact Registry reports for it (checked by the tests).
CLEANUP_POLICY_FILE="$SCRIPT_DIR/artifact-cleanup-policy.json"
CLEANUP_POLICY_STATE=$'5\t2592000s'

# Errors that documented propagation delays cause, and only those, are retried (bounded):
# - Eventarc's service agent right after the API is first used in a project (the error's own
#   text says permissions may take a few minutes to propagate);
# - an API enabled moments ago (Service Usage's message says to wait and retry);
# - a service account created moments ago that IAM does not see yet, and concurrent edits of
#   one IAM policy (IAM is eventually consistent: https://cloud.google.com/iam/docs/access-change-propagation).
TRANSIENT_ERRORS=(
  'If you recently started to use Eventarc, it may take a few minutes'
  'If you enabled this API recently, wait a few minutes for the action to propagate'
  'Service account [^ ]+ does not exist'
  'There were concurrent policy changes'
)
# A build refused for want of a permission, and a deploy refused because the function's account
# may not read a secret, are retried too, but only in a run that has just made those grants
# (grants take 2 to 7 minutes or more to apply, per the page above); in any other run they are
# real errors.
BUILD_PERMISSION_ERROR='Build failed.*([Pp]ermission|[Dd]enied|does not have .* access)'
SECRET_PERMISSION_ERROR='Permission denied on secret'

# The tutorial's sample ride (its steps 03 and 06); `verify` replaces ride_id with a unique one.
SAMPLE_RIDE='{"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}'

usage() {
  cat <<USAGE
Usage: ./$SCRIPT_NAME [deploy|verify|logs|destroy] [options]

Subcommands:
  deploy    (default) create or update everything, then run verify
  verify    publish the tutorial's sample ride to the input topic and wait for its
            prediction on a short-lived subscription of its own (a rejected ride fails
            at once with the dead-letter reason)
  logs      show the function's recent logs (gcloud functions logs read)
  destroy   delete the function and what deploy.sh created for it (topics, subscriptions,
            service accounts, image repository, grants), after you type the project id
            (or pass --yes)

Options (each also readable from the environment variable in brackets):
  --project ID               [PROJECT_ID] default: gcloud config get-value project
  --region REGION            [REGION] default: us-central1
  --function-name NAME       [FUNCTION_NAME] default: ride-prediction
  --model-uri URI            [MODEL_URI] required for deploy, e.g.
                             gs://BUCKET/1/RUN_ID/artifacts/model or models:/NAME@ALIAS
  --model-bucket BUCKET      [MODEL_BUCKET] bucket the function may read; default: the
                             bucket of a gs:// MODEL_URI (set it for models:/ and runs:/ URIs)
  --mlflow-tracking-uri URI  [MLFLOW_TRACKING_URI] passed to the function if set
  --mlflow-tracking-token-secret SECRET[:VERSION]
                             [MLFLOW_TRACKING_TOKEN_SECRET] Secret Manager secret the
                             function reads as MLFLOW_TRACKING_TOKEN (version default: latest)
  --mlflow-tracking-username-secret SECRET[:VERSION]
                             [MLFLOW_TRACKING_USERNAME_SECRET] ... as MLFLOW_TRACKING_USERNAME
  --mlflow-tracking-password-secret SECRET[:VERSION]
                             [MLFLOW_TRACKING_PASSWORD_SECRET] ... as MLFLOW_TRACKING_PASSWORD
  --model-refresh-seconds N  [MODEL_REFRESH_SECONDS] passed to the function if set
  --model-name NAME          [MODEL_NAME] default: ride_duration_prediction_model
  --model-version VERSION    [MODEL_VERSION] overrides the derived version if set
  --input-topic TOPIC        [INPUT_TOPIC] Stream A, default: taxi-ride-streaming
  --output-topic TOPIC       [OUTPUT_TOPIC] Stream B, default: ride-predictions
  --output-subscription SUB  [OUTPUT_SUBSCRIPTION] default: ride-predictions-sub
  --dead-letter-topic TOPIC  [DEAD_LETTER_TOPIC] default: FUNCTION_NAME-dead-letter
  --dead-letter-subscription SUB
                             [DEAD_LETTER_SUBSCRIPTION] default: DEAD_LETTER_TOPIC-sub
  --dead-letter-retention DURATION
                             [DEAD_LETTER_RETENTION] how long unread dead letters are kept
                             (10m to 31d), default: 31d; the subscription never expires
  --max-delivery-attempts N  [MAX_DELIVERY_ATTEMPTS] before Pub/Sub dead-letters a message
                             that keeps failing (5-100), default: 10
  --ack-deadline SECONDS     [ACK_DEADLINE] how long Pub/Sub waits for the function's answer
                             to a push (10-600, at least TIMEOUT), default: TIMEOUT
  --min-retry-delay SECONDS  [MIN_RETRY_DELAY] Pub/Sub's first redelivery delay, default: 10
  --max-retry-delay SECONDS  [MAX_RETRY_DELAY] its longest redelivery delay, default: 60
  --service-account NAME     [SERVICE_ACCOUNT] the function's identity, default: FUNCTION_NAME-fn
  --trigger-service-account NAME
                             [TRIGGER_SERVICE_ACCOUNT] the Eventarc trigger's identity,
                             default: FUNCTION_NAME-invoker
  --build-service-account ACCOUNT
                             [BUILD_SERVICE_ACCOUNT] an existing account (name or email) that
                             you have given the build roles (docs/deploy.md); default:
                             deploy.sh creates and grants FUNCTION_NAME-build
  --docker-repository NAME   [DOCKER_REPOSITORY] Artifact Registry repository for the
                             function's images, default: FUNCTION_NAME-images
  --runtime RUNTIME          [RUNTIME] default: python312
  --cpu CPU                  [CPU] vCPUs per instance, default: 1 (at least 1 when
                             concurrency is above 1)
  --concurrency N            [CONCURRENCY] requests per instance (1-1000), default:
                             $DEFAULT_CONCURRENCY; the function's THREADS is set to it
  --memory SIZE              [MEMORY] default: 1Gi
  --timeout DURATION         [TIMEOUT] seconds, e.g. 60s (at most 540s), default: 60s
  --max-instances N          [MAX_INSTANCES] default: 10
  --min-instances N          [MIN_INSTANCES] default: 0 (warm instances cost money even idle)
  --cpu-boost | --no-cpu-boost
                             [CPU_BOOST=true|false] startup CPU boost on the function's Cloud
                             Run service; default: leave the service's setting alone
  --ingress-settings VALUE   [INGRESS_SETTINGS] default: internal-only
  --env KEY=VALUE            extra environment variable for the function (repeatable),
                             e.g. --env LOG_LEVEL=DEBUG (never credentials: use the
                             --mlflow-tracking-*-secret options)
  --force                    [FORCE_DEPLOY=1] redeploy even if nothing changed (new instances
                             then reload the model, e.g. after moving a registry alias)
  --no-verify                [VERIFY=0] deploy without running verify at the end
  --verify-timeout SECONDS   [VERIFY_TIMEOUT] default: 600
  --log-limit N              [LOG_LIMIT] lines for logs, default: 50
  --yes                      destroy without asking
  --dry-run                  print each gcloud command (one per line, shell-quoted) and run
                             none of them (without --project it reads the default project from
                             gcloud's local configuration); values known only at run time
                             appear as UPPER_CASE placeholders
  -h, --help                 this help

Retries (environment only): errors that documented propagation delays cause are retried up to
DEPLOY_RETRY_ATTEMPTS times (default 6), waiting DEPLOY_RETRY_DELAY_SECONDS (default 15),
doubling up to 120, and giving up after DEPLOY_RETRY_TIMEOUT_SECONDS (default 1200) per step.
Any other error stops the script at once.
USAGE
}

# ---------------------------------------------------------------------------- output helpers

log() { printf '%s\n' "$*" >&2; }
step() { log "==> $*"; }
ok() { log "    ok: $*"; }
die() {
  log "$SCRIPT_NAME: error: $*"
  exit 1
}

# Quote words so that a POSIX shell (and Python's shlex) reads them back unchanged.
shell_quote() {
  local word quoted=() squote="'\\''"
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      quoted+=("$word")
    else
      quoted+=("'${word//\'/$squote}'")
    fi
  done
  printf '%s\n' "${quoted[*]}"
}

is_dry_run() { [[ $DRY_RUN == 1 ]]; }

# retry_pause ATTEMPT STARTED: after a failed attempt whose stderr is in $WORK_DIR/stderr,
# sleeps and returns 0 if the error is one of TRANSIENT_ERRORS and the attempt and time budget
# allow another try; returns 1 otherwise (the caller then stops).
retry_pause() {
  local attempt=$1 started=$2 pattern matched="" delay elapsed i
  for pattern in "${TRANSIENT_ERRORS[@]}" ${EXTRA_TRANSIENT_ERRORS[@]+"${EXTRA_TRANSIENT_ERRORS[@]}"}; do
    if grep -Eq -- "$pattern" "$WORK_DIR/stderr"; then
      matched=$pattern
      break
    fi
  done
  [[ -n $matched ]] || return 1
  delay=$DEPLOY_RETRY_DELAY_SECONDS
  for ((i = 1; i < attempt && delay < 120; i++)); do delay=$((delay * 2)); done
  ((delay <= 120)) || delay=120
  elapsed=$((SECONDS - started))
  if ((attempt >= DEPLOY_RETRY_ATTEMPTS || elapsed + delay > DEPLOY_RETRY_TIMEOUT_SECONDS)); then
    log "      attempt $attempt of $DEPLOY_RETRY_ATTEMPTS failed (a propagation delay: '$matched'); giving up after ${elapsed}s"
    return 1
  fi
  log "      attempt $attempt of $DEPLOY_RETRY_ATTEMPTS failed (a propagation delay: '$matched'); retrying in ${delay}s"
  sleep "$delay"
}

EXTRA_TRANSIENT_ERRORS=()
GRANTS_MADE=0

# run DESCRIPTION COMMAND...: a command that changes something. Its output goes to stderr
# (stdout is kept for what a subcommand prints as its result). Dry run: print the command.
run() {
  local description=$1
  shift
  if is_dry_run; then
    shell_quote "$@"
    return 0
  fi
  log "    + $description"
  log "      \$ $(shell_quote "$@")"
  local attempt=1 status started=$SECONDS
  while true; do
    status=0
    # stdout to our stderr; stderr shown as it comes and kept for retry_pause.
    { "$@" 2>&1 1>&3 3>&- | tee "$WORK_DIR/stderr" >&2 3>&-; } 3>&2 || status=$?
    ((status == 0)) && return 0
    retry_pause "$attempt" "$started" || die "'$description' failed (exit $status) running: $(shell_quote "$@")
Nothing after this step was changed. Fix the cause above and re-run; re-running is safe."
    attempt=$((attempt + 1))
  done
}

# query COMMAND...: a read-only command. Sets QUERY_OUT to its output and returns 0; returns 1
# if gcloud says the resource does not exist; stops the script on any other error (no
# credentials, no permission, ...), because guessing "absent" there would create duplicates.
# Dry run: prints the command and answers "does not exist", so the plan shows every change.
QUERY_OUT=""
query() {
  QUERY_OUT=""
  if is_dry_run; then
    shell_quote "$@"
    return 1
  fi
  local attempt=1 status started=$SECONDS
  while true; do
    status=0
    QUERY_OUT=$("$@" 2>"$WORK_DIR/stderr") || status=$?
    ((status == 0)) && return 0
    # "Permission denied (or it may not exist)" is not a "no": stop rather than create.
    if ! grep -q PERMISSION_DENIED "$WORK_DIR/stderr" &&
      grep -Eqi 'NOT_FOUND|not found|does not exist|status=\[404\]' "$WORK_DIR/stderr"; then
      return 1
    fi
    if ! retry_pause "$attempt" "$started"; then
      cat "$WORK_DIR/stderr" >&2
      die "could not check the current state (exit $status): $(shell_quote "$@")"
    fi
    attempt=$((attempt + 1))
  done
}

BEFORE_GRANT=""

# IAM groups whose add/remove-iam-policy-binding take --condition: gcloud refuses (with prompts
# off) to edit a policy that holds conditional bindings unless --condition is given
# (googlecloudsdk/command_lib/iam/iam_util.py), so these get --condition=None.
condition_flag() {
  case $1 in
    pubsub) CONDITION=() ;;
    *) CONDITION=(--condition=None) ;;
  esac
}

# has_binding ROLE MEMBER GET-IAM-POLICY-COMMAND...: whether the policy grants ROLE to MEMBER
# without a condition. The format's filter() prints the role only for a matching binding; it
# works on every get-iam-policy command, including `gcloud storage buckets`, which has no
# --filter flag.
has_binding() {
  local role=$1 member=$2
  shift 2
  query "$@" --format="value(bindings.filter(\"role=$role AND members=$member AND -condition:*\").extract(role).flatten())" &&
    [[ -n $QUERY_OUT ]]
}

# split_resource RESOURCE-GROUP... -- RESOURCE-ARGS...: sets GROUP (e.g. `pubsub topics`) and
# ARGS (the resource and its flags) for grant and revoke.
split_resource() {
  GROUP=()
  while [[ $1 != -- ]]; do
    GROUP+=("$1")
    shift
  done
  shift
  ARGS=("$@")
}

# grant WHAT ROLE MEMBER RESOURCE-GROUP... -- RESOURCE-ARGS...: add an IAM binding unless present
# (running the function named in BEFORE_GRANT first, if any).
#   e.g. grant "publish to X" roles/pubsub.publisher serviceAccount:A pubsub topics -- X
grant() {
  local what=$1 role=$2 member=$3
  shift 3
  split_resource "$@"
  local group=("${GROUP[@]}")
  set -- "${ARGS[@]}"
  if has_binding "$role" "$member" gcloud "${group[@]}" get-iam-policy "$@"; then
    ok "$what ($role)"
    return 0
  fi
  [[ -z $BEFORE_GRANT ]] || "$BEFORE_GRANT"
  condition_flag "${group[0]}"
  run "grant $role: $what" \
    gcloud "${group[@]}" add-iam-policy-binding "$@" --member="$member" --role="$role" \
    "${CONDITION[@]}"
  GRANTS_MADE=$((GRANTS_MADE + 1))
}

# revoke WHAT ROLE MEMBER RESOURCE-GROUP... -- RESOURCE-ARGS...: remove a binding if present.
revoke() {
  local what=$1 role=$2 member=$3
  shift 3
  split_resource "$@"
  local group=("${GROUP[@]}")
  set -- "${ARGS[@]}"
  if has_binding "$role" "$member" gcloud "${group[@]}" get-iam-policy "$@" || is_dry_run; then
    condition_flag "${group[0]}"
    run "revoke $role: $what" \
      gcloud "${group[@]}" remove-iam-policy-binding "$@" --member="$member" --role="$role" \
      "${CONDITION[@]}"
  fi
}

# ------------------------------------------------------------------------------ configuration

DRY_RUN=0
ASSUME_YES=0
COMMAND=deploy
EXTRA_ENV=()

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }

parse_args() {
  local command_set=0 flag value
  while (($# > 0)); do
    flag=$1
    value=""
    if [[ $flag == --*=* ]]; then
      value=${flag#*=}
      flag=${flag%%=*}
      set -- "$flag" "$value" "${@:2}"
    fi
    case $flag in
      deploy | verify | logs | destroy)
        ((command_set == 0)) || die "only one subcommand, please (got '$COMMAND' and '$flag')"
        COMMAND=$flag
        command_set=1
        shift
        continue
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      --dry-run) DRY_RUN=1 ;;
      --yes | -y) ASSUME_YES=1 ;;
      --force) FORCE_DEPLOY=1 ;;
      --no-verify) VERIFY=0 ;;
      --cpu-boost) CPU_BOOST=true ;;
      --no-cpu-boost) CPU_BOOST=false ;;
      --project | --region | --function-name | --model-uri | --model-bucket | \
        --mlflow-tracking-uri | --mlflow-tracking-token-secret | \
        --mlflow-tracking-username-secret | --mlflow-tracking-password-secret | \
        --model-refresh-seconds | --model-name | --model-version | --input-topic | \
        --output-topic | --output-subscription | --dead-letter-topic | \
        --dead-letter-subscription | --dead-letter-retention | --max-delivery-attempts | \
        --ack-deadline | --min-retry-delay | --max-retry-delay | --service-account | \
        --trigger-service-account | --build-service-account | --docker-repository | \
        --runtime | --cpu | --concurrency | --memory | --timeout | --max-instances | \
        --min-instances | --ingress-settings | --verify-timeout | --log-limit | --env)
        need_value "$@"
        value=$2
        case $flag in
          --project) PROJECT_ID=$value ;;
          --region) REGION=$value ;;
          --function-name) FUNCTION_NAME=$value ;;
          --model-uri) MODEL_URI=$value ;;
          --model-bucket) MODEL_BUCKET=$value ;;
          --mlflow-tracking-uri) MLFLOW_TRACKING_URI=$value ;;
          --mlflow-tracking-token-secret) MLFLOW_TRACKING_TOKEN_SECRET=$value ;;
          --mlflow-tracking-username-secret) MLFLOW_TRACKING_USERNAME_SECRET=$value ;;
          --mlflow-tracking-password-secret) MLFLOW_TRACKING_PASSWORD_SECRET=$value ;;
          --model-refresh-seconds) MODEL_REFRESH_SECONDS=$value ;;
          --model-name) MODEL_NAME=$value ;;
          --model-version) MODEL_VERSION=$value ;;
          --input-topic) INPUT_TOPIC=$value ;;
          --output-topic) OUTPUT_TOPIC=$value ;;
          --output-subscription) OUTPUT_SUBSCRIPTION=$value ;;
          --dead-letter-topic) DEAD_LETTER_TOPIC=$value ;;
          --dead-letter-subscription) DEAD_LETTER_SUBSCRIPTION=$value ;;
          --dead-letter-retention) DEAD_LETTER_RETENTION=$value ;;
          --max-delivery-attempts) MAX_DELIVERY_ATTEMPTS=$value ;;
          --ack-deadline) ACK_DEADLINE=$value ;;
          --min-retry-delay) MIN_RETRY_DELAY=$value ;;
          --max-retry-delay) MAX_RETRY_DELAY=$value ;;
          --service-account) SERVICE_ACCOUNT=$value ;;
          --trigger-service-account) TRIGGER_SERVICE_ACCOUNT=$value ;;
          --build-service-account) BUILD_SERVICE_ACCOUNT=$value ;;
          --docker-repository) DOCKER_REPOSITORY=$value ;;
          --runtime) RUNTIME=$value ;;
          --cpu) CPU=$value ;;
          --concurrency) CONCURRENCY=$value ;;
          --memory) MEMORY=$value ;;
          --timeout) TIMEOUT=$value ;;
          --max-instances) MAX_INSTANCES=$value ;;
          --min-instances) MIN_INSTANCES=$value ;;
          --ingress-settings) INGRESS_SETTINGS=$value ;;
          --verify-timeout) VERIFY_TIMEOUT=$value ;;
          --log-limit) LOG_LIMIT=$value ;;
          --env)
            [[ $value == [A-Za-z_]*=* ]] || die "--env wants KEY=VALUE, got '$value'"
            EXTRA_ENV+=("$value")
            ;;
        esac
        shift
        ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
}

parse_args "$@"

# Defaults (environment variables win over these; flags win over both).
REGION=${REGION:-us-central1}
FUNCTION_NAME=${FUNCTION_NAME:-ride-prediction}
MODEL_URI=${MODEL_URI:-}
MODEL_NAME=${MODEL_NAME:-ride_duration_prediction_model}
MODEL_VERSION=${MODEL_VERSION:-}
MODEL_REFRESH_SECONDS=${MODEL_REFRESH_SECONDS:-}
MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-}
MLFLOW_TRACKING_TOKEN_SECRET=${MLFLOW_TRACKING_TOKEN_SECRET:-}
MLFLOW_TRACKING_USERNAME_SECRET=${MLFLOW_TRACKING_USERNAME_SECRET:-}
MLFLOW_TRACKING_PASSWORD_SECRET=${MLFLOW_TRACKING_PASSWORD_SECRET:-}
INPUT_TOPIC=${INPUT_TOPIC:-taxi-ride-streaming}
OUTPUT_TOPIC=${OUTPUT_TOPIC:-ride-predictions}
OUTPUT_SUBSCRIPTION=${OUTPUT_SUBSCRIPTION:-ride-predictions-sub}
DEAD_LETTER_TOPIC=${DEAD_LETTER_TOPIC:-${FUNCTION_NAME}-dead-letter}
DEAD_LETTER_SUBSCRIPTION=${DEAD_LETTER_SUBSCRIPTION:-${DEAD_LETTER_TOPIC}-sub}
DEAD_LETTER_RETENTION=${DEAD_LETTER_RETENTION:-31d}
MAX_DELIVERY_ATTEMPTS=${MAX_DELIVERY_ATTEMPTS:-10}
MIN_RETRY_DELAY=${MIN_RETRY_DELAY:-10}
MAX_RETRY_DELAY=${MAX_RETRY_DELAY:-60}
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-${FUNCTION_NAME}-fn}
TRIGGER_SERVICE_ACCOUNT=${TRIGGER_SERVICE_ACCOUNT:-${FUNCTION_NAME}-invoker}
BUILD_SERVICE_ACCOUNT=${BUILD_SERVICE_ACCOUNT:-}
DOCKER_REPOSITORY=${DOCKER_REPOSITORY:-${FUNCTION_NAME}-images}
RUNTIME=${RUNTIME:-python312}
CPU=${CPU:-1}
CONCURRENCY=${CONCURRENCY:-$DEFAULT_CONCURRENCY}
MEMORY=${MEMORY:-1Gi}
TIMEOUT=${TIMEOUT:-60s}
MAX_INSTANCES=${MAX_INSTANCES:-10}
MIN_INSTANCES=${MIN_INSTANCES:-0}
CPU_BOOST=${CPU_BOOST:-}
INGRESS_SETTINGS=${INGRESS_SETTINGS:-internal-only}
FORCE_DEPLOY=${FORCE_DEPLOY:-0}
VERIFY=${VERIFY:-1}
VERIFY_TIMEOUT=${VERIFY_TIMEOUT:-600}
VERIFY_POLL_SECONDS=${VERIFY_POLL_SECONDS:-5}
LOG_LIMIT=${LOG_LIMIT:-50}
DEPLOY_RETRY_ATTEMPTS=${DEPLOY_RETRY_ATTEMPTS:-6}
DEPLOY_RETRY_DELAY_SECONDS=${DEPLOY_RETRY_DELAY_SECONDS:-15}
DEPLOY_RETRY_TIMEOUT_SECONDS=${DEPLOY_RETRY_TIMEOUT_SECONDS:-1200}

command -v gcloud >/dev/null || die "gcloud is not on PATH: install the Google Cloud CLI first"

if [[ -z ${PROJECT_ID:-} ]]; then
  # Only gcloud's local configuration is read here, also in a dry run.
  PROJECT_ID=$(gcloud config get-value project 2>/dev/null || true)
  [[ -n $PROJECT_ID ]] || die "no project: pass --project ID or set PROJECT_ID"
fi

is_whole_number() { [[ $1 =~ ^[0-9]+$ ]]; }

# seconds_of DURATION: a Pub/Sub duration (Ns, Nm, Nh or Nd) in seconds, or nothing.
seconds_of() {
  [[ $1 =~ ^([0-9]+)([smhd])$ ]] || return 0
  local n=${BASH_REMATCH[1]}
  case ${BASH_REMATCH[2]} in
    s) echo "$n" ;;
    m) echo $((n * 60)) ;;
    h) echo $((n * 3600)) ;;
    d) echo $((n * 86400)) ;;
  esac
}

# A Secret Manager reference as gcloud's --set-secrets takes it (secrets_config.py).
SECRET_REF_PATTERN='^[A-Za-z0-9_-]+(:([1-9][0-9]*|latest))?$'

validate_config() {
  local name
  for name in MAX_INSTANCES MIN_INSTANCES VERIFY_TIMEOUT VERIFY_POLL_SECONDS LOG_LIMIT \
    DEPLOY_RETRY_ATTEMPTS DEPLOY_RETRY_DELAY_SECONDS DEPLOY_RETRY_TIMEOUT_SECONDS \
    MAX_DELIVERY_ATTEMPTS CONCURRENCY MIN_RETRY_DELAY MAX_RETRY_DELAY; do
    is_whole_number "${!name}" || die "$name must be a whole number, got '${!name}'"
  done
  ((DEPLOY_RETRY_ATTEMPTS >= 1)) || die "DEPLOY_RETRY_ATTEMPTS must be at least 1"
  ((MAX_DELIVERY_ATTEMPTS >= 5 && MAX_DELIVERY_ATTEMPTS <= 100)) ||
    die "MAX_DELIVERY_ATTEMPTS must be between 5 and 100 (Pub/Sub's limits)"
  ((MIN_INSTANCES <= MAX_INSTANCES)) || die "MIN_INSTANCES is above MAX_INSTANCES"
  # Pub/Sub's retry policy allows 0-600 s for each delay.
  ((MIN_RETRY_DELAY <= MAX_RETRY_DELAY && MAX_RETRY_DELAY <= 600)) ||
    die "retry delays must satisfy MIN_RETRY_DELAY <= MAX_RETRY_DELAY <= 600"
  [[ $TIMEOUT =~ ^([0-9]+)s?$ ]] || die "TIMEOUT must be seconds, e.g. 60s, got '$TIMEOUT'"
  TIMEOUT_SECONDS=${BASH_REMATCH[1]}
  # Event-driven 2nd gen functions time out after at most 9 minutes.
  ((TIMEOUT_SECONDS >= 1 && TIMEOUT_SECONDS <= 540)) || die "TIMEOUT must be 1s to 540s"
  # The push subscription's ack deadline is how long Pub/Sub waits for the function's answer:
  # shorter than the function's timeout, a slow (cold) request would be redelivered while it runs.
  ACK_DEADLINE=${ACK_DEADLINE:-$((TIMEOUT_SECONDS < 10 ? 10 : TIMEOUT_SECONDS))}
  is_whole_number "$ACK_DEADLINE" || die "ACK_DEADLINE must be a whole number, got '$ACK_DEADLINE'"
  ((ACK_DEADLINE >= TIMEOUT_SECONDS && ACK_DEADLINE >= 10 && ACK_DEADLINE <= 600)) ||
    die "ACK_DEADLINE must be 10-600 seconds and at least TIMEOUT ($TIMEOUT_SECONDS)"
  DEAD_LETTER_RETENTION_SECONDS=$(seconds_of "$DEAD_LETTER_RETENTION")
  if [[ -z $DEAD_LETTER_RETENTION_SECONDS ]] ||
    ((DEAD_LETTER_RETENTION_SECONDS < 600 || DEAD_LETTER_RETENTION_SECONDS > 2678400)); then
    die "DEAD_LETTER_RETENTION must be 10m to 31d (Pub/Sub's limits), e.g. 7d, got '$DEAD_LETTER_RETENTION'"
  fi
  # https://cloud.google.com/functions/docs/configuring/concurrency: at most 1000, and more
  # than 1 needs at least one whole vCPU.
  ((CONCURRENCY >= 1 && CONCURRENCY <= 1000)) || die "CONCURRENCY must be 1 to 1000"
  [[ $CPU =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "CPU must be a number of vCPUs, e.g. 1, got '$CPU'"
  if ((CONCURRENCY > 1)) && [[ $CPU =~ ^0*(\.[0-9]*)?$ ]]; then
    die "CONCURRENCY above 1 needs CPU of at least 1 (got CPU=$CPU)"
  fi
  [[ -z $MODEL_REFRESH_SECONDS ]] || is_whole_number "$MODEL_REFRESH_SECONDS" ||
    die "MODEL_REFRESH_SECONDS must be a whole number, got '$MODEL_REFRESH_SECONDS'"
  for name in SERVICE_ACCOUNT TRIGGER_SERVICE_ACCOUNT; do
    [[ ${!name} =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] ||
      die "$name '${!name}' is not a valid service account name (6-30 characters: a-z, 0-9, -); set $name"
  done
  if [[ -z $BUILD_SERVICE_ACCOUNT ]]; then
    [[ ${FUNCTION_NAME}-build =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] ||
      die "'${FUNCTION_NAME}-build' is not a valid service account name; set BUILD_SERVICE_ACCOUNT"
  fi
  [[ $DOCKER_REPOSITORY =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "DOCKER_REPOSITORY '$DOCKER_REPOSITORY' is not a valid repository name (a-z, 0-9, -)"
  case $CPU_BOOST in
    "" | true | false) ;;
    *) die "CPU_BOOST must be true, false or empty, got '$CPU_BOOST'" ;;
  esac
  local pair
  for pair in ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}; do
    case ${pair%%=*} in
      MLFLOW_TRACKING_TOKEN | MLFLOW_TRACKING_USERNAME | MLFLOW_TRACKING_PASSWORD)
        die "${pair%%=*} must not be a plain environment value: store it in Secret Manager and pass --$(tr '_A-Z' '-a-z' <<<"${pair%%=*}")-secret SECRET"
        ;;
      THREADS) die "THREADS follows --concurrency; set that instead" ;;
    esac
  done
  for name in MLFLOW_TRACKING_TOKEN_SECRET MLFLOW_TRACKING_USERNAME_SECRET \
    MLFLOW_TRACKING_PASSWORD_SECRET; do
    [[ -z ${!name} || ${!name} =~ $SECRET_REF_PATTERN ]] ||
      die "$name must be SECRET or SECRET:VERSION (a secret in project $PROJECT_ID), got '${!name}'"
  done
  if [[ -n $MLFLOW_TRACKING_TOKEN_SECRET && -n $MLFLOW_TRACKING_USERNAME_SECRET$MLFLOW_TRACKING_PASSWORD_SECRET ]]; then
    die "MLflow authenticates with a token or with a username and password, not both"
  fi
  if [[ -n $MLFLOW_TRACKING_USERNAME_SECRET$MLFLOW_TRACKING_PASSWORD_SECRET &&
    (-z $MLFLOW_TRACKING_USERNAME_SECRET || -z $MLFLOW_TRACKING_PASSWORD_SECRET) ]]; then
    die "MLFLOW_TRACKING_USERNAME_SECRET and MLFLOW_TRACKING_PASSWORD_SECRET go together"
  fi
}
validate_config

SA_EMAIL="${SERVICE_ACCOUNT}@${PROJECT_ID}.iam.gserviceaccount.com"
TRIGGER_SA_EMAIL="${TRIGGER_SERVICE_ACCOUNT}@${PROJECT_ID}.iam.gserviceaccount.com"
SA_MEMBER="serviceAccount:${SA_EMAIL}"
TRIGGER_SA_MEMBER="serviceAccount:${TRIGGER_SA_EMAIL}"
# The build identity: deploy.sh's own account, unless BUILD_SERVICE_ACCOUNT names yours.
if [[ -z $BUILD_SERVICE_ACCOUNT ]]; then
  BUILD_SA_MANAGED=1
  BUILD_SA_NAME=${FUNCTION_NAME}-build
  BUILD_SA_EMAIL="${BUILD_SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
else
  BUILD_SA_MANAGED=0
  BUILD_SA_NAME=${BUILD_SERVICE_ACCOUNT%%@*}
  BUILD_SA_EMAIL=$BUILD_SERVICE_ACCOUNT
  [[ $BUILD_SA_EMAIL == *@* ]] || BUILD_SA_EMAIL="${BUILD_SA_EMAIL}@${PROJECT_ID}.iam.gserviceaccount.com"
fi
BUILD_SA_MEMBER="serviceAccount:${BUILD_SA_EMAIL}"
P=(--project="$PROJECT_ID")

# Secrets the function reads as environment variables, as ENV=SECRET:VERSION: MLflow's own
# credential variables (mlflow/environment_variables.py; https://mlflow.org/docs/latest/ml/auth).
# Version default: latest, read when an instance starts.
SECRET_ENV=()
for name in MLFLOW_TRACKING_TOKEN MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD; do
  ref=${name}_SECRET
  ref=${!ref}
  [[ -z $ref ]] && continue
  [[ $ref == *:* ]] || ref="$ref:latest"
  SECRET_ENV+=("$name=$ref")
done

if [[ -z ${MODEL_BUCKET:-} && $MODEL_URI == gs://* ]]; then
  MODEL_BUCKET=${MODEL_URI#gs://}
  MODEL_BUCKET=${MODEL_BUCKET%%/*}
fi
MODEL_BUCKET=${MODEL_BUCKET:-}
MODEL_BUCKET=${MODEL_BUCKET#gs://}

WORK_DIR=$(mktemp -d)
VERIFY_SUBSCRIPTIONS=()
# On any exit: delete verify's subscriptions if it did not get to (they also expire by
# themselves after a day), then the scratch directory.
cleanup() {
  local subscription
  is_dry_run && VERIFY_SUBSCRIPTIONS=()
  for subscription in ${VERIFY_SUBSCRIPTIONS[@]+"${VERIFY_SUBSCRIPTIONS[@]}"}; do
    gcloud pubsub subscriptions delete "$subscription" "${P[@]}" --quiet >/dev/null 2>&1 ||
      log "    warning: could not delete subscription $subscription; it expires within a day"
  done
  rm -rf "$WORK_DIR"
}
trap cleanup EXIT

# Relative paths below (--source=., the runtime files) are relative to the repository root.
cd "$SCRIPT_DIR"

# ---------------------------------------------------------------------------------- deploy

project_number() {
  if query gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)' &&
    [[ -n $QUERY_OUT ]]; then
    PROJECT_NUMBER=$QUERY_OUT
  elif is_dry_run; then
    PROJECT_NUMBER=PROJECT_NUMBER
  else
    die "could not read the number of project $PROJECT_ID"
  fi
  PUBSUB_AGENT_MEMBER="serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
  # Where Cloud Functions keeps the uploaded source for the build: it appears with the first
  # deploy in the region (https://cloud.google.com/functions/docs/building).
  SOURCES_BUCKET="gcf-v2-sources-${PROJECT_NUMBER}-${REGION}"
}

enable_apis() {
  step "APIs"
  local api missing=() apis=("${REQUIRED_APIS[@]}")
  ((${#SECRET_ENV[@]} == 0)) || apis+=(secretmanager.googleapis.com)
  query gcloud services list --enabled "${P[@]}" --format='value(config.name)' || true
  for api in "${apis[@]}"; do
    if grep -Fxq "$api" <<<"$QUERY_OUT"; then
      ok "$api enabled"
    else
      missing+=("$api")
    fi
  done
  if ((${#missing[@]} > 0)); then
    run "enable ${missing[*]}" gcloud services enable "${missing[@]}" "${P[@]}"
  fi
}

ensure_topic() {
  local topic=$1
  if query gcloud pubsub topics describe "$topic" "${P[@]}" --format='value(name)'; then
    ok "topic $topic exists"
  else
    run "create topic $topic" gcloud pubsub topics create "$topic" "${P[@]}" \
      --labels="$MANAGED_MARK"
  fi
}

ensure_pull_subscription() {
  local subscription=$1 topic=$2
  if query gcloud pubsub subscriptions describe "$subscription" "${P[@]}" --format='value(topic)'; then
    [[ $QUERY_OUT == "projects/$PROJECT_ID/topics/$topic" ]] ||
      log "    warning: subscription $subscription is attached to '$QUERY_OUT', not topic $topic"
    ok "subscription $subscription exists"
  else
    run "create pull subscription $subscription on $topic" \
      gcloud pubsub subscriptions create "$subscription" --topic="$topic" "${P[@]}" \
      --labels="$MANAGED_MARK"
  fi
}

# The dead letters' subscription must outlive quiet months: Pub/Sub deletes a subscription
# after 31 days without activity by default, and an unread dead-letter subscription has none,
# so later dead letters would be dropped (a topic without subscriptions keeps nothing). It never
# expires, and keeps unread messages for DEAD_LETTER_RETENTION (Pub/Sub's maximum, 31 days, by
# default; https://cloud.google.com/pubsub/docs/subscription-properties).
ensure_dead_letter_subscription() {
  local subscription=$DEAD_LETTER_SUBSCRIPTION topic=$DEAD_LETTER_TOPIC
  local settings=(--expiration-period=never --message-retention-duration="$DEAD_LETTER_RETENTION")
  if query gcloud pubsub subscriptions describe "$subscription" "${P[@]}" \
    --format='value(topic,expirationPolicy.ttl,messageRetentionDuration)'; then
    local attached=${QUERY_OUT%%$'\t'*}
    [[ $attached == "projects/$PROJECT_ID/topics/$topic" ]] ||
      log "    warning: subscription $subscription is attached to '$attached', not topic $topic"
    if [[ ${QUERY_OUT#*$'\t'} == $'\t'"${DEAD_LETTER_RETENTION_SECONDS}s" ]]; then
      ok "subscription $subscription never expires and keeps dead letters for $DEAD_LETTER_RETENTION"
    else
      run "dead-letter subscription $subscription: never expire, keep $DEAD_LETTER_RETENTION" \
        gcloud pubsub subscriptions update "$subscription" "${P[@]}" "${settings[@]}"
    fi
  else
    run "create pull subscription $subscription on $topic" \
      gcloud pubsub subscriptions create "$subscription" --topic="$topic" "${P[@]}" \
      --labels="$MANAGED_MARK" "${settings[@]}"
  fi
}

ensure_service_account() {
  local name=$1 email=$2 purpose=$3
  if query gcloud iam service-accounts describe "$email" "${P[@]}" --format='value(email)'; then
    ok "service account $email exists"
  else
    run "create service account $name" gcloud iam service-accounts create "$name" "${P[@]}" \
      --display-name="$FUNCTION_NAME $purpose" \
      --description="$purpose of Cloud Function $FUNCTION_NAME ($MANAGED_MARK)"
  fi
}

# The function's secrets: they must exist (deploy.sh never sees their values); the runtime
# identity may read those secrets and no others. The deploy checks that access
# (https://cloud.google.com/run/docs/configuring/secrets), so a grant made in this run may not
# have reached it yet: then that refusal is retried too.
configure_secrets() {
  ((${#SECRET_ENV[@]} > 0)) || return 0
  step "Secrets (Secret Manager)"
  local pair secret grants_before=$GRANTS_MADE
  for pair in "${SECRET_ENV[@]}"; do
    secret=${pair#*=}
    secret=${secret%%:*}
    if ! query gcloud secrets describe "$secret" "${P[@]}" --format='value(name)' && ! is_dry_run; then
      die "secret $secret does not exist in project $PROJECT_ID; create it with
  printf %s \"\$VALUE\" | gcloud secrets create $secret --data-file=- --project=$PROJECT_ID"
    fi
    grant "$SERVICE_ACCOUNT may read secret $secret (as ${pair%%=*})" \
      roles/secretmanager.secretAccessor "$SA_MEMBER" secrets -- "$secret" "${P[@]}"
  done
  if ((GRANTS_MADE > grants_before)); then
    EXTRA_TRANSIENT_ERRORS+=("$SECRET_PERMISSION_ERROR")
  fi
}

# The build's image repository, owned by deploy.sh so the build account's writer grant can be
# scoped to it; its cleanup policy keeps it from growing with every deploy
# (https://cloud.google.com/artifact-registry/docs/repositories/cleanup-policy).
ensure_repository() {
  local repo=$DOCKER_REPOSITORY
  local cleanup=(gcloud artifacts repositories set-cleanup-policies "$repo" --location="$REGION"
    "${P[@]}" --policy="$CLEANUP_POLICY_FILE" --no-dry-run)
  if query gcloud artifacts repositories describe "$repo" --location="$REGION" "${P[@]}" \
    --format='value(cleanupPolicies.keep-recent.mostRecentVersions.keepCount,cleanupPolicies.delete-old.condition.olderThan,cleanupPolicyDryRun)'; then
    if [[ $QUERY_OUT == "$CLEANUP_POLICY_STATE"$'\t' || $QUERY_OUT == "$CLEANUP_POLICY_STATE"$'\tFalse' ]]; then
      ok "repository $repo exists with its cleanup policy"
    else
      run "cleanup policy on repository $repo" "${cleanup[@]}"
    fi
  else
    run "create image repository $repo" \
      gcloud artifacts repositories create "$repo" --repository-format=docker \
      --location="$REGION" "${P[@]}" --labels="$MANAGED_MARK" \
      --description="Images of Cloud Function $FUNCTION_NAME ($MANAGED_MARK)"
    run "cleanup policy on repository $repo" "${cleanup[@]}"
  fi
}

# The build identity (https://cloud.google.com/functions/docs/securing/build-custom-sa): new
# projects' default build account may lack the rights to build, and gcloud would then ask
# whether to go on (or, unattended, go on and fail minutes later). So every deploy names a
# build account: deploy.sh's own, with the three roles the docs list, each on the narrowest
# resource that works; or one you prepared (BUILD_SERVICE_ACCOUNT), which only gets the writer
# grant on deploy.sh's repository.
configure_build_identity() {
  step "Build identity and image repository"
  local grants_before=$GRANTS_MADE
  if ((BUILD_SA_MANAGED)); then
    ensure_service_account "$BUILD_SA_NAME" "$BUILD_SA_EMAIL" "build identity"
  elif ! query gcloud iam service-accounts describe "$BUILD_SA_EMAIL" "${P[@]}" \
    --format='value(email)' && ! is_dry_run; then
    die "build service account $BUILD_SA_EMAIL not found (BUILD_SERVICE_ACCOUNT)"
  fi
  ensure_repository
  grant "build may push images to repository $DOCKER_REPOSITORY" roles/artifactregistry.writer \
    "$BUILD_SA_MEMBER" artifacts repositories -- "$DOCKER_REPOSITORY" --location="$REGION" "${P[@]}"
  if ((BUILD_SA_MANAGED)); then
    grant_build_project_roles
  fi
  if ((GRANTS_MADE > grants_before)); then
    EXTRA_TRANSIENT_ERRORS+=("$BUILD_PERMISSION_ERROR")
  fi
}

grant_build_project_roles() {
  # Cloud Logging's roles exist only at project level (and above).
  grant "build may write its logs (project level: the role exists nowhere lower)" \
    roles/logging.logWriter "$BUILD_SA_MEMBER" projects -- "$PROJECT_ID"
  # The build reads the uploaded source from the sources bucket, which Cloud Functions creates
  # with the first deploy in the region: grant on the bucket when it exists, else on the project
  # until the deploy has created it (narrow_build_storage then moves the grant to the bucket).
  if query gcloud storage buckets describe "gs://$SOURCES_BUCKET" "${P[@]}" --format='value(name)'; then
    grant "build may read the function's source in gs://$SOURCES_BUCKET" \
      roles/storage.objectAdmin "$BUILD_SA_MEMBER" storage buckets -- "gs://$SOURCES_BUCKET"
  else
    grant "build may read the function's source (project level until gs://$SOURCES_BUCKET exists)" \
      roles/storage.objectAdmin "$BUILD_SA_MEMBER" projects -- "$PROJECT_ID"
  fi
}

# After the first deploy the sources bucket exists: the build's storage grant moves from the
# project to that bucket.
narrow_build_storage() {
  ((BUILD_SA_MANAGED)) || return 0
  if query gcloud storage buckets describe "gs://$SOURCES_BUCKET" "${P[@]}" --format='value(name)' ||
    is_dry_run; then
    grant "build may read the function's source in gs://$SOURCES_BUCKET" \
      roles/storage.objectAdmin "$BUILD_SA_MEMBER" storage buckets -- "gs://$SOURCES_BUCKET"
    revoke "build's project-level storage grant, now on gs://$SOURCES_BUCKET" \
      roles/storage.objectAdmin "$BUILD_SA_MEMBER" projects -- "$PROJECT_ID"
  else
    log "    warning: gs://$SOURCES_BUCKET not found after the deploy; the build account keeps"
    log "             roles/storage.objectAdmin on the project (docs/deploy.md, 'Build identity')"
  fi
}

# The Pub/Sub service agent does Pub/Sub's own work for this deployment: it signs the trigger's
# pushes as the trigger's identity and moves messages to the dead-letter topic. Its grants come
# before the deploy and before the subscription's dead-letter policy. In a new project the
# agent may not exist yet: `services identity create` creates or returns it (once per run, and
# only when one of its grants is missing).
PUBSUB_AGENT_READY=0
ensure_pubsub_agent() {
  ((PUBSUB_AGENT_READY == 0)) || return 0
  run "make sure the Pub/Sub service agent exists" \
    gcloud beta services identity create --service=pubsub.googleapis.com "${P[@]}"
  PUBSUB_AGENT_READY=1
}

# pubsub_agent_grant WHAT ROLE RESOURCE-GROUP... -- RESOURCE-ARGS...
pubsub_agent_grant() {
  local what=$1 role=$2
  shift 2
  BEFORE_GRANT=ensure_pubsub_agent
  grant "$what" "$role" "$PUBSUB_AGENT_MEMBER" "$@"
  BEFORE_GRANT=""
}

configure_pubsub_agent() {
  step "Pub/Sub service agent (before the deploy, so gcloud has nothing to offer)"
  # gcloud functions deploy looks for this agent's Token Creator (or Pub/Sub Service Agent)
  # role on the *project* and, when missing, offers to grant it there
  # (googlecloudsdk/command_lib/functions/v2/deploy_util.py); unattended it only warns. The
  # role is granted here on the one account the pushes are signed as instead
  # (https://cloud.google.com/pubsub/docs/push#authentication, the page gcloud's check names).
  pubsub_agent_grant "Pub/Sub service agent may sign pushes as $TRIGGER_SERVICE_ACCOUNT" \
    roles/iam.serviceAccountTokenCreator iam service-accounts -- "$TRIGGER_SA_EMAIL" "${P[@]}"
  pubsub_agent_grant "Pub/Sub service agent may dead-letter to $DEAD_LETTER_TOPIC" \
    roles/pubsub.publisher pubsub topics -- "$DEAD_LETTER_TOPIC" "${P[@]}"
}

# The function's environment (docs/design.md, "Configuration").
function_env_vars() {
  ENV_VARS=(
    "MODEL_URI=$MODEL_URI"
    "PROJECT_ID=$PROJECT_ID"
    "PUBLISH_STREAM=$OUTPUT_TOPIC"
    "DEAD_LETTER_STREAM=$DEAD_LETTER_TOPIC"
    "MODEL_NAME=$MODEL_NAME"
    # functions-framework serves with this many gunicorn threads: one per concurrent request.
    "THREADS=$CONCURRENCY"
  )
  [[ -z $MODEL_VERSION ]] || ENV_VARS+=("MODEL_VERSION=$MODEL_VERSION")
  [[ -z $MODEL_REFRESH_SECONDS ]] || ENV_VARS+=("MODEL_REFRESH_SECONDS=$MODEL_REFRESH_SECONDS")
  [[ -z $MLFLOW_TRACKING_URI ]] || ENV_VARS+=("MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI")
  ENV_VARS+=(${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"})
}

# One --set-env-vars value, with a delimiter that no value contains (`gcloud topic escaping`):
# a model URI may hold commas (a query string) or '@' (a registry alias).
env_vars_flag() {
  local delimiter pair joined
  for delimiter in '|' ';' '#' '!' '~~'; do
    joined=""
    for pair in "${ENV_VARS[@]}"; do
      [[ $pair == *"$delimiter"* ]] && continue 2
      [[ $pair == *$'\n'* ]] && die "environment variable values cannot contain newlines: ${pair%%=*}"
      joined+="${joined:+$delimiter}$pair"
    done
    printf -- '--set-env-vars=^%s^%s' "$delimiter" "$joined"
    return 0
  done
  die "the environment variables use every delimiter deploy.sh knows; simplify their values"
}

# Secrets as environment variables: --set-secrets replaces the function's whole set, and
# --clear-secrets empties it, so a secret removed from the configuration is removed from the
# function too.
secrets_flag() {
  if ((${#SECRET_ENV[@]} == 0)); then
    printf -- '--clear-secrets'
  else
    local IFS=,
    printf -- '--set-secrets=%s' "${SECRET_ENV[*]}"
  fi
}

sha256() {
  if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi | cut -d' ' -f1
}

# A fingerprint of what a deploy would produce: the runtime files and the deploy command (so
# also --cpu, --concurrency, THREADS, the secrets and the build settings). It goes on the
# function as a label, so an unchanged function is not rebuilt on a re-run.
deploy_fingerprint() {
  {
    local file
    for file in "${RUNTIME_FILES[@]}"; do
      printf '%s\0' "$file"
      cat "$file"
      printf '\0'
    done
    printf '%s\0' "$@"
  } | sha256 | cut -c1-40
}

check_upload_files() {
  local file expected actual
  for file in "${RUNTIME_FILES[@]}"; do
    [[ -f $file ]] || die "runtime file $file is missing from $SCRIPT_DIR"
  done
  # What gcloud would really upload, after .gcloudignore (a local command; it reads no cloud).
  if ! query gcloud meta list-files-for-upload .; then
    is_dry_run && return 0
    die ".gcloudignore: gcloud cannot list the files to upload"
  fi
  expected=$(printf '%s\n' "${RUNTIME_FILES[@]}" | sort)
  actual=$(sort <<<"$QUERY_OUT")
  [[ $actual == "$expected" ]] ||
    die "refusing to deploy: .gcloudignore would upload
$actual
instead of exactly
$expected"
  ok "upload holds only: ${RUNTIME_FILES[*]}"
}

deploy_function() {
  step "Cloud Function $FUNCTION_NAME ($REGION)"
  check_upload_files
  function_env_vars
  local env_flag secrets
  env_flag=$(env_vars_flag)
  secrets=$(secrets_flag)
  local deploy=(
    gcloud functions deploy "$FUNCTION_NAME" --gen2 "${P[@]}"
    --region="$REGION"
    --runtime="$RUNTIME"
    --source=.
    --entry-point=predict_duration
    --trigger-topic="$INPUT_TOPIC"
    --service-account="$SA_EMAIL"
    --trigger-service-account="$TRIGGER_SA_EMAIL"
    --build-service-account="projects/$PROJECT_ID/serviceAccounts/$BUILD_SA_EMAIL"
    --docker-repository="projects/$PROJECT_ID/locations/$REGION/repositories/$DOCKER_REPOSITORY"
    "$env_flag"
    "$secrets"
    --retry
    --cpu="$CPU"
    --concurrency="$CONCURRENCY"
    --memory="$MEMORY"
    --timeout="$TIMEOUT"
    --min-instances="$MIN_INSTANCES"
    --max-instances="$MAX_INSTANCES"
    --ingress-settings="$INGRESS_SETTINGS"
  )
  local fingerprint
  fingerprint=$(deploy_fingerprint "${deploy[@]}")
  if [[ $FORCE_DEPLOY != 1 ]] &&
    query gcloud functions describe "$FUNCTION_NAME" "${P[@]}" --region="$REGION" \
      --format='value(labels.deploy-config,state)' &&
    [[ $QUERY_OUT == "$fingerprint"$'\t'ACTIVE ]]; then
    ok "function is ACTIVE with this code and configuration (deploy-config=$fingerprint)"
    return 0
  fi
  is_dry_run || log "    (building and deploying takes a few minutes)"
  run "deploy function $FUNCTION_NAME" "${deploy[@]}" \
    --update-labels="$MANAGED_MARK,deploy-config=$fingerprint"
}

# Values that exist only once the function does; a dry run shows placeholders.
function_resources() {
  if query gcloud functions describe "$FUNCTION_NAME" "${P[@]}" --region="$REGION" \
    --format='value(serviceConfig.service,eventTrigger.trigger)' && [[ -n $QUERY_OUT ]]; then
    RUN_SERVICE=${QUERY_OUT%%$'\t'*}
    RUN_SERVICE=${RUN_SERVICE##*/}
    TRIGGER=${QUERY_OUT#*$'\t'}
  elif is_dry_run; then
    RUN_SERVICE=$FUNCTION_NAME
    TRIGGER=EVENTARC_TRIGGER
  else
    die "function $FUNCTION_NAME not found in $REGION after deploying it"
  fi
  [[ -n $RUN_SERVICE && -n $TRIGGER && $TRIGGER != "$QUERY_OUT" ]] || is_dry_run ||
    die "function $FUNCTION_NAME has no Cloud Run service or Eventarc trigger: $QUERY_OUT"
  if query gcloud eventarc triggers describe "$TRIGGER" --location="$REGION" "${P[@]}" \
    --format='value(transport.pubsub.subscription)' && [[ -n $QUERY_OUT ]]; then
    TRIGGER_SUBSCRIPTION=${QUERY_OUT##*/}
  elif is_dry_run; then
    TRIGGER_SUBSCRIPTION=EVENTARC_TRIGGER_SUBSCRIPTION
  else
    die "Eventarc trigger $TRIGGER has no Pub/Sub subscription"
  fi
}

# The subscription Eventarc created for the trigger, brought to this deployment's settings on
# every run (a redeploy may recreate the trigger, and with it the subscription). Defaults and
# why they change (https://cloud.google.com/eventarc/docs/retry-events,
# https://cloud.google.com/pubsub/docs/subscription-properties):
# - ack deadline: how long Pub/Sub waits for the push's answer; at least the function's timeout;
# - retry delays: Eventarc's default backoff grows to 600 s; MAX_RETRY_DELAY caps it;
# - dead-letter policy: without it a message that always fails is retried for the whole 24-hour
#   retention of Eventarc's subscription, then dropped;
# - expiry: never, so a quiet month does not delete the trigger's subscription.
configure_trigger_subscription() {
  local dead_letter_path="projects/$PROJECT_ID/topics/$DEAD_LETTER_TOPIC"
  local expected="$ACK_DEADLINE"$'\t'"${MIN_RETRY_DELAY}s"$'\t'"${MAX_RETRY_DELAY}s"$'\t'"$dead_letter_path"$'\t'"$MAX_DELIVERY_ATTEMPTS"$'\t'
  if query gcloud pubsub subscriptions describe "$TRIGGER_SUBSCRIPTION" "${P[@]}" \
    --format='value(ackDeadlineSeconds,retryPolicy.minimumBackoff,retryPolicy.maximumBackoff,deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts,expirationPolicy.ttl)' &&
    [[ $QUERY_OUT == "$expected" ]]; then
    ok "subscription $TRIGGER_SUBSCRIPTION: ack deadline ${ACK_DEADLINE}s, retries ${MIN_RETRY_DELAY}-${MAX_RETRY_DELAY}s, dead letters to $DEAD_LETTER_TOPIC after $MAX_DELIVERY_ATTEMPTS attempts, never expires"
    return 0
  fi
  run "settings of the trigger's subscription $TRIGGER_SUBSCRIPTION" \
    gcloud pubsub subscriptions update "$TRIGGER_SUBSCRIPTION" "${P[@]}" \
    --ack-deadline="$ACK_DEADLINE" \
    --min-retry-delay="${MIN_RETRY_DELAY}s" --max-retry-delay="${MAX_RETRY_DELAY}s" \
    --dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS" \
    --expiration-period=never
}

configure_trigger() {
  step "Trigger: invoker, Pub/Sub service agent, subscription settings"
  function_resources
  # The Cloud Run service exists only now; the sooner the trigger may invoke it, the fewer
  # early pushes are refused (they are redelivered with backoff).
  grant "trigger identity may invoke service $RUN_SERVICE" roles/run.invoker "$TRIGGER_SA_MEMBER" \
    run services -- "$RUN_SERVICE" --region="$REGION" "${P[@]}"
  # Pub/Sub itself moves a message to the dead-letter topic: its service agent must also
  # acknowledge (subscribe) on the trigger's subscription. Granted before the policy is set.
  pubsub_agent_grant "Pub/Sub service agent may forward from $TRIGGER_SUBSCRIPTION" \
    roles/pubsub.subscriber pubsub subscriptions -- "$TRIGGER_SUBSCRIPTION" "${P[@]}"
  configure_trigger_subscription
}

configure_cpu_boost() {
  [[ -n $CPU_BOOST ]] || return 0
  step "Startup CPU boost: $CPU_BOOST"
  local flag=--cpu-boost
  [[ $CPU_BOOST == true ]] || flag=--no-cpu-boost
  if query gcloud run services describe "$RUN_SERVICE" --region="$REGION" "${P[@]}" \
    --format='value(spec.template.metadata.annotations."run.googleapis.com/startup-cpu-boost")'; then
    # gcloud writes the annotation as Python's str(bool): "True" or "False".
    local current=${QUERY_OUT,,}
    if [[ $current == "$CPU_BOOST" || ($CPU_BOOST == false && -z $current) ]]; then
      ok "service $RUN_SERVICE already has startup CPU boost $CPU_BOOST"
      return 0
    fi
  fi
  # gen2 functions have no deploy flag for this; it is a setting of the Cloud Run service,
  # re-applied here because a redeploy of the function may reset it.
  run "set startup CPU boost on service $RUN_SERVICE" \
    gcloud run services update "$RUN_SERVICE" --region="$REGION" "${P[@]}" "$flag"
}

cmd_deploy() {
  [[ -n $MODEL_URI ]] || die "MODEL_URI is required: pass --model-uri or set MODEL_URI
  (e.g. gs://BUCKET/1/RUN_ID/artifacts/model, as in the tutorial's step 07)"
  [[ $MODEL_URI =~ ^[a-zA-Z][a-zA-Z0-9+.-]*:/ ]] ||
    die "MODEL_URI '$MODEL_URI' is not a URI the cloud can reach (gs://, models:/, runs:/ ...)"
  log "Deploying $FUNCTION_NAME to project $PROJECT_ID, region $REGION"
  log "  Stream A $INPUT_TOPIC -> function -> Stream B $OUTPUT_TOPIC ($OUTPUT_SUBSCRIPTION)"
  log "  dead letters -> $DEAD_LETTER_TOPIC ($DEAD_LETTER_SUBSCRIPTION)"
  log "  model $MODEL_URI"
  log "  identities: function $SA_EMAIL, trigger $TRIGGER_SA_EMAIL, build $BUILD_SA_EMAIL"
  log "  scale: $CPU vCPU, $CONCURRENCY concurrent requests per instance, $MIN_INSTANCES-$MAX_INSTANCES instances"

  enable_apis
  project_number

  step "Pub/Sub topics and subscriptions"
  ensure_topic "$INPUT_TOPIC"
  ensure_topic "$OUTPUT_TOPIC"
  ensure_topic "$DEAD_LETTER_TOPIC"
  ensure_pull_subscription "$OUTPUT_SUBSCRIPTION" "$OUTPUT_TOPIC"
  # Messages on a topic without a subscription are dropped: keep the dead letters somewhere.
  ensure_dead_letter_subscription

  step "Service accounts"
  ensure_service_account "$SERVICE_ACCOUNT" "$SA_EMAIL" "runtime identity"
  ensure_service_account "$TRIGGER_SERVICE_ACCOUNT" "$TRIGGER_SA_EMAIL" "Eventarc trigger identity"

  step "IAM for the function's identity (least privilege)"
  grant "$SERVICE_ACCOUNT may publish predictions to $OUTPUT_TOPIC" roles/pubsub.publisher \
    "$SA_MEMBER" pubsub topics -- "$OUTPUT_TOPIC" "${P[@]}"
  grant "$SERVICE_ACCOUNT may publish rejects to $DEAD_LETTER_TOPIC" roles/pubsub.publisher \
    "$SA_MEMBER" pubsub topics -- "$DEAD_LETTER_TOPIC" "${P[@]}"
  if [[ -n $MODEL_BUCKET ]]; then
    grant "$SERVICE_ACCOUNT may read the model in gs://$MODEL_BUCKET" roles/storage.objectViewer \
      "$SA_MEMBER" storage buckets -- "gs://$MODEL_BUCKET"
  else
    log "    warning: no model bucket known for '$MODEL_URI': no storage access granted"
    log "             (set MODEL_BUCKET to the bucket your MLflow artifacts live in)"
  fi
  configure_secrets
  configure_build_identity
  configure_pubsub_agent

  deploy_function
  configure_trigger
  narrow_build_storage
  configure_cpu_boost

  step "Deployed"
  if [[ $VERIFY == 1 ]]; then
    cmd_verify
  elif ! is_dry_run; then
    log "    check it end to end with: ./$SCRIPT_NAME verify --project $PROJECT_ID --region $REGION"
  fi
}

# ---------------------------------------------------------------------------------- verify

# verify: the sample ride, with a unique ride_id (also as an attribute), through the deployed
# function. Two short-lived subscriptions of its own, created before it publishes, see only
# that ride (a filter on the ride_id attribute; the function copies it onto its prediction, and
# a dead letter keeps the source's attributes): one on Stream B, where the prediction must
# arrive, and one on the dead-letter topic, where a rejected ride would land with its
# dlq_reason. Nobody else's messages are pulled. Both are deleted at the end, and expire by
# themselves after a day if the script is killed. The timeout covers IAM propagation of the
# invoker grant (up to about 7 minutes) and the redelivery backoff after a refused push.
cmd_verify() {
  step "Verify: a ride on $INPUT_TOPIC must come out on $OUTPUT_TOPIC"
  local ride_id=${VERIFY_RIDE_ID:-deploy-verify-$(date +%s)-$RANDOM}
  local tag=${ride_id//[^A-Za-z0-9-]/-}
  local predictions="${FUNCTION_NAME}-${tag}"
  local rejects="${FUNCTION_NAME}-${tag}-dead-letters"
  local filter="attributes.ride_id = \"$ride_id\""
  local subscription topic
  for subscription in "$predictions" "$rejects"; do
    topic=$OUTPUT_TOPIC
    [[ $subscription == "$predictions" ]] || topic=$DEAD_LETTER_TOPIC
    VERIFY_SUBSCRIPTIONS+=("$subscription")
    run "subscription $subscription on $topic for ride $ride_id only" \
      gcloud pubsub subscriptions create "$subscription" --topic="$topic" "${P[@]}" \
      --message-filter="$filter" --expiration-period=1d --message-retention-duration=10m \
      --labels="$MANAGED_MARK"
  done

  local message="{\"ride\": $SAMPLE_RIDE, \"ride_id\": \"$ride_id\"}"
  run "publish the sample ride $ride_id to $INPUT_TOPIC" \
    gcloud pubsub topics publish "$INPUT_TOPIC" "${P[@]}" --message="$message" \
    --attribute="ride_id=$ride_id"

  local pull_prediction=(gcloud pubsub subscriptions pull "$predictions" "${P[@]}" --limit=1
    --format='value(message.data.decode(base64).decode(utf-8))')
  local pull_reject=(gcloud pubsub subscriptions pull "$rejects" "${P[@]}" --limit=1
    --format='value(message.attributes.dlq_reason)')
  local result=""
  if is_dry_run; then
    shell_quote "${pull_prediction[@]}"
    shell_quote "${pull_reject[@]}"
  else
    local deadline=$((SECONDS + VERIFY_TIMEOUT))
    log "    waiting up to ${VERIFY_TIMEOUT}s for the prediction (a cold start loads the model first)"
    while true; do
      query "${pull_prediction[@]}" || die "subscription $predictions not found"
      if [[ -n $QUERY_OUT ]]; then
        result=$QUERY_OUT
        break
      fi
      query "${pull_reject[@]}" || die "subscription $rejects not found"
      [[ -z $QUERY_OUT ]] ||
        die "NOT VERIFIED: the function rejected ride $ride_id (dead-lettered): $QUERY_OUT"
      if ((SECONDS >= deadline)); then
        die "NOT VERIFIED: no prediction for ride $ride_id on $OUTPUT_TOPIC within ${VERIFY_TIMEOUT}s.
  Look at the function's logs: ./$SCRIPT_NAME logs --project $PROJECT_ID --region $REGION"
      fi
      sleep "$VERIFY_POLL_SECONDS"
    done
  fi
  for subscription in "$predictions" "$rejects"; do
    run "delete verify's subscription $subscription" \
      gcloud pubsub subscriptions delete "$subscription" "${P[@]}" --quiet
  done
  VERIFY_SUBSCRIPTIONS=()
  is_dry_run && return 0
  log "    prediction on Stream B: $result"
  log "VERIFIED: ride $ride_id went $INPUT_TOPIC -> $FUNCTION_NAME -> $OUTPUT_TOPIC"
  printf '%s\n' "$result"
}

# ------------------------------------------------------------------------------------ logs

cmd_logs() {
  local logs=(gcloud functions logs read "$FUNCTION_NAME" --gen2 --region="$REGION" "${P[@]}"
    --limit="$LOG_LIMIT")
  if is_dry_run; then
    shell_quote "${logs[@]}"
  else
    "${logs[@]}"
  fi
}

# --------------------------------------------------------------------------------- destroy

# managed DESCRIBE-COMMAND...: whether the resource exists and carries deploy.sh's mark.
# Returns 0 (ours), 1 (absent) or 2 (exists, not created by deploy.sh).
managed() {
  query "$@" || return 1
  [[ $QUERY_OUT == *"$MANAGED_MARK"* ]] && return 0
  return 2
}

# destroy_one WHAT DESCRIBE-COMMAND... -- DELETE-COMMAND...: delete the resource if deploy.sh
# created it. Sets DESTROY_STATUS as `managed` returns it.
DESTROY_STATUS=0
destroy_one() {
  local what=$1
  shift
  local describe=()
  while [[ $1 != -- ]]; do
    describe+=("$1")
    shift
  done
  shift
  DESTROY_STATUS=0
  managed "${describe[@]}" || DESTROY_STATUS=$?
  if ((DESTROY_STATUS == 0)) || is_dry_run; then
    run "delete $what" "$@"
  elif ((DESTROY_STATUS == 1)); then
    ok "$what does not exist"
  else
    log "    kept: $what was not created by deploy.sh (it has no label $MANAGED_MARK)"
  fi
}

cmd_destroy() {
  log "This deletes from project $PROJECT_ID (region $REGION), if deploy.sh created them:"
  log "  function $FUNCTION_NAME (with its Eventarc trigger and subscription)"
  log "  subscriptions $OUTPUT_SUBSCRIPTION, $DEAD_LETTER_SUBSCRIPTION"
  log "  topics $INPUT_TOPIC, $OUTPUT_TOPIC, $DEAD_LETTER_TOPIC (their messages are lost)"
  log "  image repository $DOCKER_REPOSITORY (the function's images)"
  log "  service accounts $SA_EMAIL, $TRIGGER_SA_EMAIL$( ((BUILD_SA_MANAGED)) && printf ', %s' "$BUILD_SA_EMAIL")"
  log "  and the grants deploy.sh gave them on resources that stay (buckets, project, secrets)"
  log "Enabled APIs stay enabled. Resources that existed before deploy.sh are kept."
  if ! is_dry_run && [[ $ASSUME_YES != 1 ]]; then
    local answer=""
    printf 'Type the project id (%s) to delete: ' "$PROJECT_ID" >&2
    read -r answer || true
    [[ $answer == "$PROJECT_ID" ]] || die "not confirmed; nothing was deleted"
  fi

  step "Destroy"
  project_number
  destroy_one "function $FUNCTION_NAME" \
    gcloud functions describe "$FUNCTION_NAME" --region="$REGION" "${P[@]}" --format='value(labels)' -- \
    gcloud functions delete "$FUNCTION_NAME" --region="$REGION" "${P[@]}" --quiet
  local subscription topic
  for subscription in "$OUTPUT_SUBSCRIPTION" "$DEAD_LETTER_SUBSCRIPTION"; do
    destroy_one "subscription $subscription" \
      gcloud pubsub subscriptions describe "$subscription" "${P[@]}" --format='value(labels)' -- \
      gcloud pubsub subscriptions delete "$subscription" "${P[@]}" --quiet
  done
  for topic in "$INPUT_TOPIC" "$OUTPUT_TOPIC" "$DEAD_LETTER_TOPIC"; do
    destroy_one "topic $topic" \
      gcloud pubsub topics describe "$topic" "${P[@]}" --format='value(labels)' -- \
      gcloud pubsub topics delete "$topic" "${P[@]}" --quiet
    if ((DESTROY_STATUS == 2)) && [[ $topic != "$INPUT_TOPIC" ]]; then
      # A topic that stays keeps no grant for an account that is about to be deleted.
      revoke "$SERVICE_ACCOUNT on kept topic $topic" roles/pubsub.publisher "$SA_MEMBER" \
        pubsub topics -- "$topic" "${P[@]}"
    fi
    if ((DESTROY_STATUS == 2)) && [[ $topic == "$DEAD_LETTER_TOPIC" ]]; then
      revoke "Pub/Sub service agent on kept topic $topic" roles/pubsub.publisher \
        "$PUBSUB_AGENT_MEMBER" pubsub topics -- "$topic" "${P[@]}"
    fi
  done
  destroy_one "image repository $DOCKER_REPOSITORY" \
    gcloud artifacts repositories describe "$DOCKER_REPOSITORY" --location="$REGION" "${P[@]}" \
    --format='value(labels)' -- \
    gcloud artifacts repositories delete "$DOCKER_REPOSITORY" --location="$REGION" "${P[@]}" --quiet
  # Grants on what stays: the buckets and secrets are not ours, the project even less.
  if [[ -n $MODEL_BUCKET ]]; then
    revoke "$SERVICE_ACCOUNT on gs://$MODEL_BUCKET" roles/storage.objectViewer "$SA_MEMBER" \
      storage buckets -- "gs://$MODEL_BUCKET"
  fi
  local pair secret
  for pair in ${SECRET_ENV[@]+"${SECRET_ENV[@]}"}; do
    secret=${pair#*=}
    secret=${secret%%:*}
    revoke "$SERVICE_ACCOUNT on secret $secret" roles/secretmanager.secretAccessor "$SA_MEMBER" \
      secrets -- "$secret" "${P[@]}"
  done
  if ((BUILD_SA_MANAGED)); then
    revoke "$BUILD_SA_NAME on the project's logs" roles/logging.logWriter "$BUILD_SA_MEMBER" \
      projects -- "$PROJECT_ID"
    revoke "$BUILD_SA_NAME on the project's storage" roles/storage.objectAdmin "$BUILD_SA_MEMBER" \
      projects -- "$PROJECT_ID"
    if query gcloud storage buckets describe "gs://$SOURCES_BUCKET" "${P[@]}" --format='value(name)' ||
      is_dry_run; then
      revoke "$BUILD_SA_NAME on gs://$SOURCES_BUCKET" roles/storage.objectAdmin "$BUILD_SA_MEMBER" \
        storage buckets -- "gs://$SOURCES_BUCKET"
    fi
  fi
  local email emails=("$SA_EMAIL" "$TRIGGER_SA_EMAIL")
  ((BUILD_SA_MANAGED == 0)) || emails+=("$BUILD_SA_EMAIL")
  for email in "${emails[@]}"; do
    destroy_one "service account $email" \
      gcloud iam service-accounts describe "$email" "${P[@]}" --format='value(description)' -- \
      gcloud iam service-accounts delete "$email" "${P[@]}" --quiet
  done
  step "Destroyed"
}

case $COMMAND in
  deploy) cmd_deploy ;;
  verify) cmd_verify ;;
  logs) cmd_logs ;;
  destroy) cmd_destroy ;;
esac
