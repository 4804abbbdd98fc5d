#!/usr/bin/env bash
# deploy.sh — from an empty GCP project to a verified ride-prediction deployment.
#
#   ./deploy.sh [deploy]   APIs, topics, subscriptions, service accounts, IAM, the function,
#                          the dead-letter policy, then `verify`
#   ./deploy.sh verify     publish the tutorial's sample ride to Stream A, pull its prediction
#                          from Stream B
#   ./deploy.sh logs       the function's recent logs
#   ./deploy.sh destroy    delete what deploy.sh created (asks first)
#
# Add --dry-run to any of them to print the gcloud commands instead of running them.
# Every step checks before it changes anything, so re-running is safe and a second run changes
# nothing. Credentials: whatever `gcloud auth login` set up; no key files. See `--help`.
set -euo pipefail

SCRIPT_NAME=deploy.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The only files the function needs; .gcloudignore lets exactly these through, and the deploy
# step refuses to upload anything else (tests/test_packaging.py keeps the lists in sync).
RUNTIME_FILES=(features.py main.py model_loader.py publisher.py requirements.txt)

# The tutorial's "Before you begin" list, plus IAM for the service accounts.
REQUIRED_APIS=(
  artifactregistry.googleapis.com
  cloudbuild.googleapis.com
  cloudfunctions.googleapis.com
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

# The tutorial's sample ride (its steps 03 and 06); `verify` replaces ride_id with a unique one.
SAMPLE_RIDE='{"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}'

usage() {
  cat <<EOF
Usage: ./$SCRIPT_NAME [deploy|verify|logs|destroy] [options]

Subcommands:
  deploy    (default) create or update everything, then run verify
  verify    publish the tutorial's sample ride to the input topic and wait for its
            prediction on the output subscription
  logs      show the function's recent logs (gcloud functions logs read)
  destroy   delete the function and the topics, subscriptions and service accounts that
            deploy.sh created, after you type the project id (or pass --yes)

Options (each also readable from the environment variable in brackets):
  --project ID               [PROJECT_ID] default: gcloud config get-value project
  --region REGION            [REGION] default: us-central1
  --function-name NAME       [FUNCTION_NAME] default: ride-prediction
  --model-uri URI            [MODEL_URI] required for deploy, e.g.
                             gs://BUCKET/1/RUN_ID/artifacts/model or models:/NAME@ALIAS
  --model-bucket BUCKET      [MODEL_BUCKET] bucket the function may read; default: the
                             bucket of a gs:// MODEL_URI (set it for models:/ and runs:/ URIs)
  --mlflow-tracking-uri URI  [MLFLOW_TRACKING_URI] passed to the function if set
  --model-name NAME          [MODEL_NAME] default: ride_duration_prediction_model
  --model-version VERSION    [MODEL_VERSION] overrides the derived version if set
  --input-topic TOPIC        [INPUT_TOPIC] Stream A, default: taxi-ride-streaming
  --output-topic TOPIC       [OUTPUT_TOPIC] Stream B, default: ride-predictions
  --output-subscription SUB  [OUTPUT_SUBSCRIPTION] default: ride-predictions-sub
  --dead-letter-topic TOPIC  [DEAD_LETTER_TOPIC] default: FUNCTION_NAME-dead-letter
  --dead-letter-subscription SUB
                             [DEAD_LETTER_SUBSCRIPTION] default: DEAD_LETTER_TOPIC-sub
  --max-delivery-attempts N  [MAX_DELIVERY_ATTEMPTS] before Pub/Sub dead-letters a message
                             that keeps failing (5-100), default: 10
  --service-account NAME     [SERVICE_ACCOUNT] the function's identity, default: FUNCTION_NAME-fn
  --trigger-service-account NAME
                             [TRIGGER_SERVICE_ACCOUNT] the Eventarc trigger's identity,
                             default: FUNCTION_NAME-invoker
  --build-service-account ACCOUNT
                             [BUILD_SERVICE_ACCOUNT] an existing account (name or email) for
                             Cloud Build; default: the project's default build account
  --runtime RUNTIME          [RUNTIME] default: python312
  --memory SIZE              [MEMORY] default: 1Gi
  --timeout DURATION         [TIMEOUT] default: 60s
  --max-instances N          [MAX_INSTANCES] default: 10
  --min-instances N          [MIN_INSTANCES] default: 0 (warm instances cost money even idle)
  --cpu-boost | --no-cpu-boost
                             [CPU_BOOST=true|false] startup CPU boost on the function's Cloud
                             Run service; default: leave the service's setting alone
  --ingress-settings VALUE   [INGRESS_SETTINGS] default: internal-only
  --env KEY=VALUE            extra environment variable for the function (repeatable),
                             e.g. --env LOG_LEVEL=DEBUG
  --force                    [FORCE_DEPLOY=1] redeploy even if nothing changed (new instances
                             then reload the model, e.g. after moving a registry alias)
  --no-verify                [VERIFY=0] deploy without running verify at the end
  --verify-timeout SECONDS   [VERIFY_TIMEOUT] default: 300
  --log-limit N              [LOG_LIMIT] lines for logs, default: 50
  --yes                      destroy without asking
  --dry-run                  print each gcloud command (one per line, shell-quoted) and run
                             none of them (without --project it reads the default project from
                             gcloud's local configuration); values known only at run time
                             appear as UPPER_CASE placeholders
  -h, --help                 this help
EOF
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

# run DESCRIPTION COMMAND...: a command that changes something. Dry run: print it.
run() {
  local description=$1
  shift
  if is_dry_run; then
    shell_quote "$@"
    return 0
  fi
  log "    + $description"
  log "      \$ $(shell_quote "$@")"
  local status=0
  "$@" || status=$?
  if ((status != 0)); then
    die "'$description' failed (exit $status) running: $(shell_quote "$@")
Nothing after this step was changed. Fix the cause above and re-run; re-running is safe."
  fi
}

# run_with_retry DESCRIPTION COMMAND...: for IAM grants, which can fail for a while after a
# service account or service agent is created (IAM is eventually consistent).
run_with_retry() {
  local description=$1
  shift
  if is_dry_run; then
    shell_quote "$@"
    return 0
  fi
  log "    + $description"
  log "      \$ $(shell_quote "$@")"
  local attempt=1 status=0
  while true; do
    status=0
    "$@" >/dev/null || status=$?
    ((status == 0)) && return 0
    if ((attempt >= RETRY_ATTEMPTS)); then
      die "'$description' failed (exit $status) after $attempt attempts running: $(shell_quote "$@")
Nothing after this step was changed. Fix the cause above and re-run; re-running is safe."
    fi
    log "      (attempt $attempt failed; IAM changes can take a minute to propagate, retrying in ${RETRY_DELAY_SECONDS}s)"
    sleep "$RETRY_DELAY_SECONDS"
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
  local status=0
  QUERY_OUT=$("$@" 2>"$WORK_DIR/stderr") || status=$?
  if ((status == 0)); then
    return 0
  fi
  # "Permission denied (or it may not exist)" is not a "no": stop rather than create.
  if ! grep -q PERMISSION_DENIED "$WORK_DIR/stderr" &&
    grep -Eqi 'NOT_FOUND|not found|does not exist|status=\[404\]' "$WORK_DIR/stderr"; then
    return 1
  fi
  cat "$WORK_DIR/stderr" >&2
  die "could not check the current state (exit $status): $(shell_quote "$@")"
}

# has_binding ROLE MEMBER GET-IAM-POLICY-COMMAND...: whether the policy grants ROLE to MEMBER.
# The format's filter() prints the role only for a matching binding; it works on every
# get-iam-policy command, including `gcloud storage buckets`, which has no --filter flag.
has_binding() {
  local role=$1 member=$2
  shift 2
  query "$@" --format="value(bindings.filter(\"role=$role AND members=$member\").extract(role).flatten())" &&
    [[ -n $QUERY_OUT ]]
}

# grant WHAT ROLE MEMBER RESOURCE-GROUP... -- RESOURCE-ARGS...: add an IAM binding unless present.
#   e.g. grant "publish to X" roles/pubsub.publisher serviceAccount:A pubsub topics -- X
grant() {
  local what=$1 role=$2 member=$3
  shift 3
  local group=()
  while [[ $1 != -- ]]; do
    group+=("$1")
    shift
  done
  shift
  if has_binding "$role" "$member" gcloud "${group[@]}" get-iam-policy "$@"; then
    ok "$what ($role)"
    return 0
  fi
  run_with_retry "grant $role: $what" \
    gcloud "${group[@]}" add-iam-policy-binding "$@" --member="$member" --role="$role"
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
        --mlflow-tracking-uri | --model-name | --model-version | --input-topic | \
        --output-topic | --output-subscription | --dead-letter-topic | \
        --dead-letter-subscription | --max-delivery-attempts | --service-account | \
        --trigger-service-account | --build-service-account | --runtime | --memory | --timeout | --max-instances | \
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
          --model-name) MODEL_NAME=$value ;;
          --model-version) MODEL_VERSION=$value ;;
          --input-topic) INPUT_TOPIC=$value ;;
          --output-topic) OUTPUT_TOPIC=$value ;;
          --output-subscription) OUTPUT_SUBSCRIPTION=$value ;;
          --dead-letter-topic) DEAD_LETTER_TOPIC=$value ;;
          --dead-letter-subscription) DEAD_LETTER_SUBSCRIPTION=$value ;;
          --max-delivery-attempts) MAX_DELIVERY_ATTEMPTS=$value ;;
          --service-account) SERVICE_ACCOUNT=$value ;;
          --trigger-service-account) TRIGGER_SERVICE_ACCOUNT=$value ;;
          --build-service-account) BUILD_SERVICE_ACCOUNT=$value ;;
          --runtime) RUNTIME=$value ;;
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
MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-}
INPUT_TOPIC=${INPUT_TOPIC:-taxi-ride-streaming}
OUTPUT_TOPIC=${OUTPUT_TOPIC:-ride-predictions}
OUTPUT_SUBSCRIPTION=${OUTPUT_SUBSCRIPTION:-ride-predictions-sub}
DEAD_LETTER_TOPIC=${DEAD_LETTER_TOPIC:-${FUNCTION_NAME}-dead-letter}
DEAD_LETTER_SUBSCRIPTION=${DEAD_LETTER_SUBSCRIPTION:-${DEAD_LETTER_TOPIC}-sub}
MAX_DELIVERY_ATTEMPTS=${MAX_DELIVERY_ATTEMPTS:-10}
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-${FUNCTION_NAME}-fn}
TRIGGER_SERVICE_ACCOUNT=${TRIGGER_SERVICE_ACCOUNT:-${FUNCTION_NAME}-invoker}
BUILD_SERVICE_ACCOUNT=${BUILD_SERVICE_ACCOUNT:-}
RUNTIME=${RUNTIME:-python312}
MEMORY=${MEMORY:-1Gi}
TIMEOUT=${TIMEOUT:-60s}
MAX_INSTANCES=${MAX_INSTANCES:-10}
MIN_INSTANCES=${MIN_INSTANCES:-0}
CPU_BOOST=${CPU_BOOST:-}
INGRESS_SETTINGS=${INGRESS_SETTINGS:-internal-only}
FORCE_DEPLOY=${FORCE_DEPLOY:-0}
VERIFY=${VERIFY:-1}
VERIFY_TIMEOUT=${VERIFY_TIMEOUT:-300}
VERIFY_POLL_SECONDS=${VERIFY_POLL_SECONDS:-5}
LOG_LIMIT=${LOG_LIMIT:-50}
RETRY_ATTEMPTS=${RETRY_ATTEMPTS:-6}
RETRY_DELAY_SECONDS=${RETRY_DELAY_SECONDS:-10}

command -v gcloud >/dev/null || die "gcloud is not on PATH: install the Google Cloud CLI first"

if [[ -z ${PROJECT_ID:-} ]]; then
  # Only gcloud's local configuration is read here, also in a dry run.
  PROJECT_ID=$(gcloud config get-value project 2>/dev/null || true)
  [[ -n $PROJECT_ID ]] || die "no project: pass --project ID or set PROJECT_ID"
fi

is_positive_int() { [[ $1 =~ ^[0-9]+$ ]]; }

validate_config() {
  local name
  for name in MAX_INSTANCES MIN_INSTANCES VERIFY_TIMEOUT VERIFY_POLL_SECONDS LOG_LIMIT \
    RETRY_ATTEMPTS RETRY_DELAY_SECONDS MAX_DELIVERY_ATTEMPTS; do
    is_positive_int "${!name}" || die "$name must be a whole number, got '${!name}'"
  done
  ((MAX_DELIVERY_ATTEMPTS >= 5 && MAX_DELIVERY_ATTEMPTS <= 100)) ||
    die "MAX_DELIVERY_ATTEMPTS must be between 5 and 100 (Pub/Sub's limits)"
  ((MIN_INSTANCES <= MAX_INSTANCES)) || die "MIN_INSTANCES is above MAX_INSTANCES"
  for name in SERVICE_ACCOUNT TRIGGER_SERVICE_ACCOUNT; do
    [[ ${!name} =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] ||
      die "$name '${!name}' is not a valid service account name (6-30 characters: a-z, 0-9, -); set $name"
  done
  case $CPU_BOOST in
    "" | true | false) ;;
    *) die "CPU_BOOST must be true, false or empty, got '$CPU_BOOST'" ;;
  esac
}
validate_config

SA_EMAIL="${SERVICE_ACCOUNT}@${PROJECT_ID}.iam.gserviceaccount.com"
TRIGGER_SA_EMAIL="${TRIGGER_SERVICE_ACCOUNT}@${PROJECT_ID}.iam.gserviceaccount.com"
SA_MEMBER="serviceAccount:${SA_EMAIL}"
TRIGGER_SA_MEMBER="serviceAccount:${TRIGGER_SA_EMAIL}"
P=(--project="$PROJECT_ID")

if [[ -z ${MODEL_BUCKET:-} && $MODEL_URI == gs://* ]]; then
  MODEL_BUCKET=${MODEL_URI#gs://}
  MODEL_BUCKET=${MODEL_BUCKET%%/*}
fi
MODEL_BUCKET=${MODEL_BUCKET:-}
MODEL_BUCKET=${MODEL_BUCKET#gs://}

WORK_DIR=$(mktemp -d)
trap 'rm -rf "$WORK_DIR"' EXIT

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
}

enable_apis() {
  step "APIs"
  local api missing=()
  query gcloud services list --enabled "${P[@]}" --format='value(config.name)' || true
  for api in "${REQUIRED_APIS[@]}"; do
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

# The function's environment (docs/design.md, "Configuration").
function_env_vars() {
  ENV_VARS=(
    "MODEL_URI=$MODEL_URI"
    "PROJECT_ID=$PROJECT_ID"
    "PUBLISH_STREAM=$OUTPUT_TOPIC"
    "DEAD_LETTER_STREAM=$DEAD_LETTER_TOPIC"
    "MODEL_NAME=$MODEL_NAME"
  )
  [[ -z $MODEL_VERSION ]] || ENV_VARS+=("MODEL_VERSION=$MODEL_VERSION")
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

sha256() {
  if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi | cut -d' ' -f1
}

# A fingerprint of what a deploy would produce: the runtime files and the deploy command. It
# goes on the function as a label, so an unchanged function is not rebuilt on a re-run.
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
  local env_flag
  env_flag=$(env_vars_flag)
  local deploy=(
    gcloud functions deploy "$FUNCTION_NAME" --gen2 "${P[@]}"
    --region="$REGION"
    --runtime="$RUNTIME"
    --source=.
    --entry-point=predict_duration
    --trigger-topic="$INPUT_TOPIC"
    --service-account="$SA_EMAIL"
    --trigger-service-account="$TRIGGER_SA_EMAIL"
    "$env_flag"
    --retry
    --memory="$MEMORY"
    --timeout="$TIMEOUT"
    --min-instances="$MIN_INSTANCES"
    --max-instances="$MAX_INSTANCES"
    --ingress-settings="$INGRESS_SETTINGS"
  )
  if [[ -n $BUILD_SERVICE_ACCOUNT ]]; then
    # Projects created since 2024 may not let the default build account build (it lacks
    # roles/cloudbuild.builds.builder); an account of your choosing avoids a project-wide grant.
    local build_email=$BUILD_SERVICE_ACCOUNT
    [[ $build_email == *@* ]] || build_email="${build_email}@${PROJECT_ID}.iam.gserviceaccount.com"
    deploy+=(--build-service-account="projects/$PROJECT_ID/serviceAccounts/$build_email")
  fi
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

configure_trigger() {
  step "Trigger: invoker and dead-letter policy"
  function_resources
  grant "trigger identity may invoke service $RUN_SERVICE" roles/run.invoker "$TRIGGER_SA_MEMBER" \
    run services -- "$RUN_SERVICE" --region="$REGION" "${P[@]}"

  local dead_letter_path="projects/$PROJECT_ID/topics/$DEAD_LETTER_TOPIC"
  if query gcloud pubsub subscriptions describe "$TRIGGER_SUBSCRIPTION" "${P[@]}" \
    --format='value(deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts)' &&
    [[ $QUERY_OUT == "$dead_letter_path"$'\t'"$MAX_DELIVERY_ATTEMPTS" ]]; then
    ok "subscription $TRIGGER_SUBSCRIPTION dead-letters to $DEAD_LETTER_TOPIC after $MAX_DELIVERY_ATTEMPTS attempts"
  else
    # Without this, a message that always fails is retried for the topic's 7-day retention.
    run "dead-letter policy on $TRIGGER_SUBSCRIPTION" \
      gcloud pubsub subscriptions update "$TRIGGER_SUBSCRIPTION" "${P[@]}" \
      --dead-letter-topic="$DEAD_LETTER_TOPIC" \
      --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"
  fi

  # Pub/Sub itself moves the message: its service agent must publish to the dead-letter topic
  # and subscribe (acknowledge) on the trigger's subscription.
  if has_binding roles/pubsub.publisher "$PUBSUB_AGENT_MEMBER" \
    gcloud pubsub topics get-iam-policy "$DEAD_LETTER_TOPIC" "${P[@]}"; then
    ok "Pub/Sub service agent may dead-letter to $DEAD_LETTER_TOPIC (roles/pubsub.publisher)"
  else
    # In a new project the Pub/Sub service agent may not exist yet: this creates or returns it.
    run "make sure the Pub/Sub service agent exists" \
      gcloud beta services identity create --service=pubsub.googleapis.com "${P[@]}"
    run_with_retry "grant roles/pubsub.publisher: Pub/Sub service agent may dead-letter to $DEAD_LETTER_TOPIC" \
      gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" "${P[@]}" \
      --member="$PUBSUB_AGENT_MEMBER" --role=roles/pubsub.publisher
  fi
  grant "Pub/Sub service agent may forward from $TRIGGER_SUBSCRIPTION" roles/pubsub.subscriber \
    "$PUBSUB_AGENT_MEMBER" pubsub subscriptions -- "$TRIGGER_SUBSCRIPTION" "${P[@]}"
  # Pub/Sub signs its push requests as the trigger's identity. Projects from before April 2021
  # need this grant for that; it is scoped to that one service account.
  grant "Pub/Sub service agent may sign as $TRIGGER_SERVICE_ACCOUNT" \
    roles/iam.serviceAccountTokenCreator "$PUBSUB_AGENT_MEMBER" \
    iam service-accounts -- "$TRIGGER_SA_EMAIL" "${P[@]}"
}

configure_cpu_boost() {
  [[ -n $CPU_BOOST ]] || return 0
  step "Startup CPU boost: $CPU_BOOST"
  local flag=--cpu-boost
  [[ $CPU_BOOST == true ]] || flag=--no-cpu-boost
  if query gcloud run services describe "$RUN_SERVICE" --region="$REGION" "${P[@]}" \
    --format='value(spec.template.metadata.annotations."run.googleapis.com/startup-cpu-boost")'; then
    if [[ $QUERY_OUT == "$CPU_BOOST" || ($CPU_BOOST == false && -z $QUERY_OUT) ]]; then
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
  log "  identities: function $SA_EMAIL, trigger $TRIGGER_SA_EMAIL"

  enable_apis
  project_number

  step "Pub/Sub topics and subscriptions"
  ensure_topic "$INPUT_TOPIC"
  ensure_topic "$OUTPUT_TOPIC"
  ensure_topic "$DEAD_LETTER_TOPIC"
  ensure_pull_subscription "$OUTPUT_SUBSCRIPTION" "$OUTPUT_TOPIC"
  # Messages on a topic without a subscription are dropped: keep the dead letters somewhere.
  ensure_pull_subscription "$DEAD_LETTER_SUBSCRIPTION" "$DEAD_LETTER_TOPIC"

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

  deploy_function
  configure_trigger
  configure_cpu_boost

  step "Deployed"
  if [[ $VERIFY == 1 ]]; then
    cmd_verify
  elif ! is_dry_run; then
    log "    check it end to end with: ./$SCRIPT_NAME verify --project $PROJECT_ID --region $REGION"
  fi
}

# ---------------------------------------------------------------------------------- verify

cmd_verify() {
  step "Verify: a ride on $INPUT_TOPIC must come out on $OUTPUT_SUBSCRIPTION"
  local ride_id=${VERIFY_RIDE_ID:-deploy-verify-$(date +%s)-$RANDOM}
  local message="{\"ride\": $SAMPLE_RIDE, \"ride_id\": \"$ride_id\"}"
  run "publish the sample ride $ride_id to $INPUT_TOPIC" \
    gcloud pubsub topics publish "$INPUT_TOPIC" "${P[@]}" --message="$message"

  local pull=(
    gcloud pubsub subscriptions pull "$OUTPUT_SUBSCRIPTION" "${P[@]}" --limit=100
    --format='value(ackId,message.attributes.ride_id,message.data.decode(base64).decode(utf-8))'
  )
  if is_dry_run; then
    shell_quote "${pull[@]}"
    shell_quote gcloud pubsub subscriptions ack "$OUTPUT_SUBSCRIPTION" "${P[@]}" --ack-ids=ACK_ID
    return 0
  fi
  # Other messages pulled here are not acknowledged: they return to the subscription after its
  # ack deadline, so a consumer reading Stream B loses nothing.
  local deadline=$((SECONDS + VERIFY_TIMEOUT)) ack_id attribute_ride_id data
  log "    waiting up to ${VERIFY_TIMEOUT}s for the prediction (a cold start loads the model first)"
  while true; do
    query "${pull[@]}" || die "subscription $OUTPUT_SUBSCRIPTION not found"
    while IFS=$'\t' read -r ack_id attribute_ride_id data; do
      if [[ $attribute_ride_id == "$ride_id" ]]; then
        run "acknowledge the prediction" \
          gcloud pubsub subscriptions ack "$OUTPUT_SUBSCRIPTION" "${P[@]}" --ack-ids="$ack_id"
        log "    prediction on Stream B: $data"
        log "VERIFIED: ride $ride_id went $INPUT_TOPIC -> $FUNCTION_NAME -> $OUTPUT_TOPIC"
        printf '%s\n' "$data"
        return 0
      fi
    done <<<"$QUERY_OUT"
    if ((SECONDS >= deadline)); then
      die "NOT VERIFIED: no prediction for ride $ride_id on $OUTPUT_SUBSCRIPTION within ${VERIFY_TIMEOUT}s.
  Look at the function's logs: ./$SCRIPT_NAME logs --project $PROJECT_ID --region $REGION"
    fi
    sleep "$VERIFY_POLL_SECONDS"
  done
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

# revoke WHAT ROLE MEMBER RESOURCE-GROUP... -- RESOURCE-ARGS...: remove a binding if present.
revoke() {
  local what=$1 role=$2 member=$3
  shift 3
  local group=()
  while [[ $1 != -- ]]; do
    group+=("$1")
    shift
  done
  shift
  if has_binding "$role" "$member" gcloud "${group[@]}" get-iam-policy "$@" || is_dry_run; then
    run "revoke $role: $what" \
      gcloud "${group[@]}" remove-iam-policy-binding "$@" --member="$member" --role="$role"
  fi
}

cmd_destroy() {
  log "This deletes from project $PROJECT_ID (region $REGION), if deploy.sh created them:"
  log "  function $FUNCTION_NAME (with its Eventarc trigger and subscription)"
  log "  subscriptions $OUTPUT_SUBSCRIPTION, $DEAD_LETTER_SUBSCRIPTION"
  log "  topics $INPUT_TOPIC, $OUTPUT_TOPIC, $DEAD_LETTER_TOPIC (their messages are lost)"
  log "  service accounts $SA_EMAIL, $TRIGGER_SA_EMAIL"
  [[ -z $MODEL_BUCKET ]] || log "  and $SERVICE_ACCOUNT's read access to gs://$MODEL_BUCKET"
  log "Enabled APIs stay enabled. Resources that existed before deploy.sh are kept."
  if ! is_dry_run && [[ $ASSUME_YES != 1 ]]; then
    local answer=""
    printf 'Type the project id (%s) to delete: ' "$PROJECT_ID" >&2
    read -r answer || true
    [[ $answer == "$PROJECT_ID" ]] || die "not confirmed; nothing was deleted"
  fi

  step "Destroy"
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
  done
  if [[ -n $MODEL_BUCKET ]]; then
    # The bucket is not ours; only the grant on it is.
    revoke "$SERVICE_ACCOUNT on gs://$MODEL_BUCKET" roles/storage.objectViewer "$SA_MEMBER" \
      storage buckets -- "gs://$MODEL_BUCKET"
  fi
  local email
  for email in "$SA_EMAIL" "$TRIGGER_SA_EMAIL"; do
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
