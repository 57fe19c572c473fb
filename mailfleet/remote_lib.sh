# mailfleet remote library: the start of every step's script. Steps run as root under bash and
# must converge: a second run on a converged host changes no file and restarts nothing.
set -euo pipefail
export LC_ALL=C
umask 022
changed=()

fail() {
  echo "mailfleet: $*" >&2
  exit 1
}

# put_file PATH OWNER:GROUP MODE < content
# Installs the content atomically (a temp file beside PATH, then rename), and only if content,
# owner or mode differ. The previous version is kept until keep_changes, so that undo_changes can
# restore it when validation fails.
put_file() {
  local path=$1 owner=$2 mode=$3 tmp
  mkdir -p "$(dirname "$path")"
  tmp=$(mktemp "$path.mailfleet-new.XXXXXX")
  cat >"$tmp"
  chown "$owner" "$tmp"
  chmod "$mode" "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path" &&
    [ "$(stat -c %U:%G:%a "$tmp")" = "$(stat -c %U:%G:%a "$path")" ]; then
    rm -f "$tmp"
    return 0
  fi
  rm -f "$path.mailfleet-old"
  if [ -e "$path" ]; then cp -p "$path" "$path.mailfleet-old"; fi
  mv -f "$tmp" "$path"
  changed+=("$path")
  echo "changed $path"
}

undo_changes() {
  local path
  for path in "${changed[@]}"; do
    if [ -e "$path.mailfleet-old" ]; then mv -f "$path.mailfleet-old" "$path"; else rm -f "$path"; fi
  done
  changed=()
}

keep_changes() {
  local path
  for path in "${changed[@]}"; do rm -f "$path.mailfleet-old"; done
}

# any_changed: did this step change any file?
any_changed() {
  [ ${#changed[@]} -gt 0 ]
}

# file_changed PATH: did this step change that file?
file_changed() {
  local path
  for path in "${changed[@]}"; do [ "$path" = "$1" ] && return 0; done
  return 1
}

# validate WHAT COMMAND...: check the new files with the service's own tool; on failure put the
# previous files back, so a bad change never reaches a running service.
validate() {
  local what=$1 output
  shift
  if ! output=$("$@" 2>&1); then
    undo_changes
    fail "$what failed; the previous files are restored. $output"
  fi
  if [ -n "$output" ]; then echo "$what: $output" >&2; fi
}

# ensure_service UNIT ACTION: enabled and running; ACTION (reload, restart or none) applies a
# change to a unit that was already running.
ensure_service() {
  local unit=$1 action=$2
  if ! systemctl is-enabled -q "$unit" 2>/dev/null; then
    systemctl enable -q "$unit"
    echo "enabled $unit"
  fi
  if ! systemctl is-active -q "$unit"; then
    systemctl start "$unit"
    echo "started $unit"
  elif [ "$action" != none ]; then
    systemctl "$action" "$unit"
    echo "${action}ed $unit"
  fi
}

instance_exists() {
  local directories
  directories=$(postconf -h multi_instance_directories 2>/dev/null || true)
  [[ " ${directories//,/ } " == *" /etc/$1 "* ]]
}

# Steps that edit /etc/postfix/main.cf take turns: postmulti create and destroy rewrite its
# multi_instance_directories, and instance steps run in parallel, so concurrent edits lose entries.
lock_default_main_cf() {
  exec 9>/run/mailfleet-postfix.lock
  flock -w 300 9 || fail "timed out waiting for another mailfleet step on this host"
}
