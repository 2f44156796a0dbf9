# Sourced by the device-call scripts (gpu_final.sh, gpu_models.sh): `step NAME CMD...` runs CMD
# unless $deadline seconds have passed since the script started, and records "NAME rc=N Ts" (or
# "skipped") in the `summary` array the script prints last.
summary=()
step() {
  local name=$1; shift
  if [ $SECONDS -gt "$deadline" ]; then summary+=("$name skipped (deadline)"); return 1; fi
  local t0=$SECONDS; "$@"; local rc=$?
  summary+=("$name rc=$rc $((SECONDS - t0))s"); return $rc
}
