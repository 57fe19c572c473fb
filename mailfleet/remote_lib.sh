# shellcheck shell=bash
# mailfleet remote library: the start of every step's script. Steps run as root under bash and
# must converge: a second run on a converged host changes no file and restarts nothing.
set -euo pipefail
export LC_ALL=C
umask 022
changed=()
# Paths mailfleet has installed: a file not listed here (and without mailfleet's header) was
# there before, so the first replacement keeps it as PATH.pre-mailfleet.
managed_list=/var/lib/mailfleet/managed-files
# What each step installed, for the drift check (`pulumi refresh`): one line a file,
# "STEP SHA256 OWNER:GROUP MODE PATH", checksums only, never contents. STEP is the Pulumi step that
# installed it, named in a line before this library (remote_step); "-" when none is named.
checksum_list=${checksum_list:-/var/lib/mailfleet/checksums}
mailfleet_step=${mailfleet_step:--}

fail() {
  echo "mailfleet: $*" >&2
  exit 1
}

# mark_ours PATH...: from now on these files are mailfleet's (no .pre-mailfleet copy of them).
mark_ours() {
  local path
  mkdir -p "$(dirname "$managed_list")"
  for path in "$@"; do
    grep -qxF "$path" "$managed_list" 2>/dev/null || echo "$path" >>"$managed_list"
  done
}

is_ours() {
  grep -qxF "$1" "$managed_list" 2>/dev/null || [[ "$(head -n 1 "$1")" == "# Managed by mailfleet"* ]]
}

# file_state PATH: "SHA256 OWNER:GROUP MODE PATH" as the file is now, the format of the record.
file_state() {
  local sum
  read -r sum _ < <(sha256sum <"$1")
  echo "$sum $(stat -c '%U:%G %a' "$1") $1"
}

# The record is appended to (cheap: put_file records every file on every run), so the last line of
# a path is the one that counts; rewrites keep only those. Under a lock: a host's steps run in parallel.
_latest_checksums() {
  awk '{ rest = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ [^ ]+ /, "", rest)
         if (!(rest in last)) order[++n] = rest
         last[rest] = $0 }
       END { for (i = 1; i <= n; i++) print last[order[i]] }' "$checksum_list"
}

# _rewrite_checksums AWK_CONDITION: keep the latest lines for which AWK_CONDITION holds (it sees
# the path as `rest`).
_rewrite_checksums() {
  local tmp
  [ -f "$checksum_list" ] || return 0
  {
    flock -w 60 8 || fail "timed out waiting for the lock on $checksum_list"
    tmp=$(mktemp "$checksum_list.XXXXXX")
    _latest_checksums | awk "{ rest = \$0; sub(/^[^ ]+ [^ ]+ [^ ]+ [^ ]+ /, \"\", rest) } $1" >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$checksum_list"
  } 8>>"$checksum_list.lock"
}

# record_file PATH [STEP]: PATH, as it is now, is what STEP (default: this step) installed.
record_file() {
  local line
  line="${2:-$mailfleet_step} $(file_state "$1")"
  [ -d "${checksum_list%/*}" ] || mkdir -p "${checksum_list%/*}"
  {
    flock -w 60 8 || fail "timed out waiting for the lock on $checksum_list"
    printf '%s\n' "$line" >>"$checksum_list"
  } 8>>"$checksum_list.lock"
}

# forget_file PATH: mailfleet no longer installs PATH.
forget_file() {
  MAILFLEET_PATH=$1 _rewrite_checksums 'rest != ENVIRON["MAILFLEET_PATH"]'
}

# recorded PATH: PATH's line in the record ("STEP SHA256 OWNER:GROUP MODE PATH"), if any.
recorded() {
  [ -f "$checksum_list" ] || return 0
  _latest_checksums | MAILFLEET_PATH=$1 awk '{ rest = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ [^ ]+ /, "", rest) }
                                              rest == ENVIRON["MAILFLEET_PATH"]'
}

# follow_edit PATH COMMAND...: run COMMAND, which rewrites a part of PATH itself (postmulti create
# and destroy edit multi_instance_directories in /etc/postfix/main.cf). If PATH was as recorded
# before, its record follows the edit, so that the drift check reports only other hands' edits.
follow_edit() {
  local path=$1 before intact=no
  shift
  before=$(recorded "$path")
  if [ -n "$before" ] && [ -f "$path" ] && [ "${before#* }" = "$(file_state "$path")" ]; then intact=yes; fi
  "$@"
  if [ "$intact" = yes ]; then record_file "$path" "${before%% *}"; fi
}

# report_checksums: for the drift check, each line of the record ("recorded STEP SHA256
# OWNER:GROUP MODE PATH"), each followed by the file as it is now ("found SHA256 OWNER:GROUP MODE
# PATH", or "found - - - PATH" when it is gone).
report_checksums() {
  local step sum owner mode path
  [ -f "$checksum_list" ] || return 0
  while read -r step sum owner mode path; do
    echo "recorded $step $sum $owner $mode $path"
    if [ -f "$path" ]; then echo "found $(file_state "$path")"; else echo "found - - - $path"; fi
  done < <(_latest_checksums)
}

# put_file PATH OWNER:GROUP MODE < content
# Installs the content atomically (a temp file beside PATH, then rename), and only if content,
# owner or mode differ. The previous version is kept until keep_changes, so that undo_changes can
# restore it when validation or the service's probe fails. A file that was there before mailfleet
# is kept once, for good, as PATH.pre-mailfleet.
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
    mark_ours "$path"
    record_file "$path"
    return 0
  fi
  rm -f "$path.mailfleet-old"
  if [ -e "$path" ]; then
    cp -p "$path" "$path.mailfleet-old"
    if [ ! -e "$path.pre-mailfleet" ] && ! is_ours "$path"; then
      cp -p "$path" "$path.pre-mailfleet"
      echo "kept the previous $path as $path.pre-mailfleet"
    fi
  fi
  mv -f "$tmp" "$path"
  mark_ours "$path"
  record_file "$path"
  changed+=("$path")
  echo "changed $path"
}

undo_changes() {
  local path
  for path in "${changed[@]}"; do
    if [ -e "$path.mailfleet-old" ]; then
      mv -f "$path.mailfleet-old" "$path"
      record_file "$path"
    else
      rm -f "$path"
      forget_file "$path"
    fi
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
# change to a unit that was already running. Returns non-zero when systemd fails.
ensure_service() {
  local unit=$1 action=$2
  if ! systemctl is-enabled -q "$unit" 2>/dev/null; then
    systemctl enable -q "$unit" || return 1
    echo "enabled $unit"
  fi
  if ! systemctl is-active -q "$unit"; then
    systemctl start "$unit" || return 1
    echo "started $unit"
  elif [ "$action" = reload ]; then
    reload_unit "$unit" || return 1
    echo "reloaded $unit"
  elif [ "$action" = restart ]; then
    systemctl restart "$unit" || return 1
    echo "restarted $unit"
  fi
}

# apply_to_service WHAT UNITS ACTIONS PROBE...: ensure_service for each unit of the
# space-separated UNITS with the matching word of ACTIONS, then PROBE, a command that prints what
# it saw and fails when the service does not work. When a unit or the probe fails, the previous
# files go back, every unit returns to its previous state (reloaded or restarted again, or stopped
# if it was not running) and the step fails naming WHAT and what was seen. The new files are kept
# only once the probe has passed. With nothing to apply, nothing is probed.
apply_to_service() {
  local what=$1 seen='' unit action i failed=no
  local -a units actions was_active was_enabled
  read -r -a units <<<"$2"
  read -r -a actions <<<"$3"
  shift 3
  [ ${#units[@]} -eq ${#actions[@]} ] || fail "apply_to_service: ${#units[@]} units but ${#actions[@]} actions"
  local nothing_to_do=yes
  for i in "${!units[@]}"; do
    was_active[i]=no was_enabled[i]=no
    systemctl is-active -q "${units[i]}" && was_active[i]=yes
    systemctl is-enabled -q "${units[i]}" 2>/dev/null && was_enabled[i]=yes
    if [ "${was_active[i]}" = no ] || [ "${actions[i]}" != none ]; then nothing_to_do=no; fi
  done
  if [ "$nothing_to_do" = yes ]; then
    for unit in "${units[@]}"; do ensure_service "$unit" none || fail "$what: could not enable $unit"; done
    keep_changes
    return 0
  fi
  for i in "${!units[@]}"; do
    unit=${units[i]} action=${actions[i]}
    if ! ensure_service "$unit" "$action"; then
      failed=yes
      seen="$unit did not ${action/none/start}: $(journalctl -u "$unit" -n 5 --no-pager -o cat 2>/dev/null | tr '\n' ' ')"
      break
    fi
  done
  if [ "$failed" = no ] && seen=$("$@" 2>&1); then
    keep_changes
    return 0
  fi
  # A unit file that goes back must reach systemd before the unit is restarted with it.
  local unit_files=no path
  for path in "${changed[@]}"; do [[ "$path" == */systemd/system/* ]] && unit_files=yes; done
  undo_changes
  if [ "$unit_files" = yes ]; then systemctl daemon-reload || true; fi
  local restored=()
  for i in "${!units[@]}"; do
    unit=${units[i]} action=${actions[i]}
    if [ "${was_active[i]}" = yes ]; then
      if [ "$action" = restart ]; then systemctl restart "$unit" || true
      elif [ "$action" = reload ]; then reload_unit "$unit" || true; fi
      systemctl is-active -q "$unit" || systemctl start "$unit" || true
      case $action in
        reload | restart) restored+=("$unit ${action}ed with them") ;;
        *) restored+=("$unit left running") ;;
      esac
    else
      systemctl stop "$unit" || true
      if [ "${was_enabled[i]}" = no ]; then systemctl disable -q "$unit" 2>/dev/null || true; fi
      restored+=("$unit stopped")
    fi
  done
  local summary
  summary=$(printf '%s, ' "${restored[@]}")
  fail "$what failed after the change ($seen); the previous files are restored, ${summary%, }"
}

# probe_smtp IP HOSTNAME [tls]: IP:25 answers with a banner naming HOSTNAME and, with tls,
# completes STARTTLS with a certificate (Postfix's own posttls-finger, no mail sent). Retries for
# about ten seconds: a master that was just started takes a moment to listen.
probe_smtp() {
  local ip=$1 hostname=$2 tls=${3:-} out='' level=none
  if [ "$tls" = tls ]; then level=encrypt; fi
  for _ in $(seq 20); do
    out=$(posttls-finger -t 5 -T 5 -l "$level" "[$ip]:25" 2>&1 || true)
    if grep -qF "< 220 $hostname " <<<"$out" &&
      { [ "$tls" != tls ] || { grep -q "TLS connection established" <<<"$out" &&
        ! grep -q "Anonymous TLS connection" <<<"$out"; }; }; then
      return 0
    fi
    sleep 0.5
  done
  echo "instance on $ip:25 did not answer as $hostname${tls:+ with STARTTLS and a certificate}: $(grep -E '^posttls-finger: ([<]|STARTTLS|.*TLS connection|.*refused|.*[Ff]ail|.*error|.*timed out)' <<<"$out" | head -n 6 | tr '\n' ' ')"
  return 1
}

# postfix_if_supported < main.cf: each `# mailfleet:if-supported NAME = VALUE` line becomes
# `NAME = VALUE` when this host's Postfix knows NAME (postconf -d), and is dropped otherwise, so
# one template serves every Postfix version and a re-apply compares the same text.
postfix_if_supported() {
  local known line name
  known=" $(postconf -d 2>/dev/null | awk '{ print $1 }' | tr '\n' ' ') "
  [[ "$known" == *" mail_version "* ]] || fail "postconf -d lists no parameters: cannot tell which this Postfix supports"
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ "$line" =~ ^#\ mailfleet:if-supported\ ([a-z0-9_]+)\ *= ]]; then
      name=${BASH_REMATCH[1]}
      if [[ "$known" == *" $name "* ]]; then printf '%s\n' "${line#\# mailfleet:if-supported }"; fi
    else
      printf '%s\n' "$line"
    fi
  done
}

# opendkim_socket CONF: the Socket an OpenDKIM configuration names ("" if none or no file).
opendkim_socket() {
  awk '$1 == "Socket" { print $2 }' "$1" 2>/dev/null || true
}

# dkim_test_dns KEY_DIR: the DNS TXT record of every key under KEY_DIR/DOMAIN/SELECTOR.private,
# as OpenDKIM's TestDNSData reads them ("NAME VALUE"), made from the private key itself, by its
# place and not by what the tables say: so the probe verifies each signature against the public
# half of the key that selector is published with, before and without DNS.
dkim_test_dns() {
  local file domain selector public
  while IFS= read -r -d '' file; do
    domain=$(basename "$(dirname "$file")") selector=$(basename "$file" .private)
    if openssl pkey -in "$file" -noout -text 2>/dev/null | grep -q '^ED25519'; then
      # RFC 8463: p= is the raw 32-byte key, the end of the DER SubjectPublicKeyInfo.
      public=$(openssl pkey -in "$file" -pubout -outform DER | tail -c 32 | base64 -w 0)
      echo "$selector._domainkey.$domain v=DKIM1;k=ed25519;p=$public"
    else
      public=$(openssl pkey -in "$file" -pubout -outform DER | base64 -w 0)
      echo "$selector._domainkey.$domain v=DKIM1;k=rsa;p=$public"
    fi
  done < <(find "$1" -mindepth 2 -maxdepth 2 -name '*.private' -type f -print0)
}

# probe_opendkim KEY_DIR [UNIT SOCKET FROM EXPECTED]...: each OpenDKIM unit runs and signs a
# message from FROM, handed to it on SOCKET (unix:PATH or local:PATH) as Postfix hands it (miltertest, as user postfix),
# with exactly the signatures EXPECTED ("d=D s=S a=A" joined by ";"; empty for none; "*" for
# whichever the signer's tables select), and each
# signature verifies against the public half of the installed key (OpenDKIM's own verifier,
# `opendkim -t`, as nobody, with the keys under KEY_DIR as its DNS: dkim_test_dns). Retries for
# about ten seconds: a signer that was just started takes a moment to listen, one that was just
# reloaded to read its tables.
probe_opendkim() {
  local key_dir=$1 dir seen='' ok=no
  shift
  dir=$(mktemp -d)
  chmod 0755 "$dir"
  dkim_test_dns "$key_dir" >"$dir/dns"
  printf 'Mode v\nSyslog no\nTestDNSData file:%s/dns\n' "$dir" >"$dir/verify.conf"
  chmod 0644 "$dir/dns" "$dir/verify.conf"
  for _ in $(seq 20); do
    if seen=$(probe_opendkim_once "$dir" "$@"); then ok=yes; break; fi
    sleep 0.5
  done
  rm -rf "$dir"
  [ "$ok" = yes ] && return 0
  echo "$seen"
  return 1
}

# dkim_tag TAG < signature: the value of one tag of a DKIM-Signature (whitespace removed).
dkim_tag() {
  tr -d ' \t\r\n' | tr ';' '\n' | sed -n "s/^$1=//p"
}

probe_opendkim_once() {
  local dir=$1 unit socket from expected out signature got passed
  shift
  while [ $# -ge 4 ]; do
    unit=$1 socket=${2/#local:/unix:} from=$3 expected=$4
    shift 4
    if ! systemctl is-active -q "$unit"; then
      echo "$unit is $(systemctl is-active "$unit" || true)"
      return 1
    fi
    # The Lua script miltertest runs: one message, then every DKIM-Signature the signer added.
    # (miltertest does not show a script's error(): fail() prints the reason first. A signer with
    # nothing to sign accepts the message at the end of its headers.)
    printf '%s\n' \
      "local function fail(why) mt.echo(\"probe: \" .. why); error(why) end" \
      "local conn = mt.connect(\"$socket\", 1, 0)" \
      "if conn == nil then fail(\"cannot connect to $socket\") end" \
      "if mt.conninfo(conn, \"localhost\", \"127.0.0.1\") ~= nil then fail(\"connection refused\") end" \
      "if mt.macro(conn, SMFIC_MAIL, \"{mail_addr}\", \"$from\") ~= nil then fail(\"macro refused\") end" \
      "if mt.mailfrom(conn, \"$from\") ~= nil then fail(\"MAIL FROM refused\") end" \
      "if mt.rcptto(conn, \"probe@mailfleet.invalid\") ~= nil then fail(\"RCPT TO refused\") end" \
      "mt.header(conn, \"From\", \"$from\")" \
      "mt.header(conn, \"To\", \"probe@mailfleet.invalid\")" \
      "mt.header(conn, \"Subject\", \"mailfleet signing probe\")" \
      "mt.set_timeout(5)" \
      "if mt.eoh(conn) ~= nil then fail(\"no answer at the end of the headers\") end" \
      "if mt.getreply(conn) == SMFIR_ACCEPT then mt.disconnect(conn); return end" \
      "if mt.getreply(conn) ~= SMFIR_CONTINUE then fail(\"refused the message at the end of its headers (milter reply \" .. string.char(mt.getreply(conn)) .. \")\") end" \
      "if mt.bodystring(conn, \"mailfleet signing probe\\r\\n\") ~= nil then fail(\"no answer to the body\") end" \
      "if mt.eom(conn) ~= nil then fail(\"no answer at the end of the message\") end" \
      "if mt.getreply(conn) ~= SMFIR_ACCEPT and mt.getreply(conn) ~= SMFIR_CONTINUE then fail(\"refused the message at its end (milter reply \" .. string.char(mt.getreply(conn)) .. \")\") end" \
      "local n = 0" \
      "while true do" \
      "  local value = mt.getheader(conn, \"DKIM-Signature\", n)" \
      "  if value == nil then break end" \
      "  mt.echo(\"DKIM-Signature:\" .. value)" \
      "  n = n + 1" \
      "end" \
      "mt.disconnect(conn)" >"$dir/probe.lua"
    chmod 0644 "$dir/probe.lua"
    if ! out=$(runuser -u postfix -- miltertest -s "$dir/probe.lua" 2>&1); then
      echo "$unit on $socket, mail from $from: $(tr '\n' ' ' <<<"$out") $unit said: $(journalctl -u "$unit" -n 2 --no-pager -o cat 2>/dev/null | tr '\n' ' ')"
      return 1
    fi
    # One signature a line (its folded continuation lines joined), then its d=, s= and a=.
    got=$(awk '/^DKIM-Signature:/ { if (s) print s; s = substr($0, 16); next } { s = s $0 } END { if (s) print s }' <<<"$out" |
      while IFS= read -r signature; do
        echo "d=$(dkim_tag d <<<"$signature") s=$(dkim_tag s <<<"$signature") a=$(dkim_tag a <<<"$signature")"
      done | sort | paste -sd ';' -)
    if [ "$expected" = "*" ]; then
      expected=$got
    elif [ "$got" != "$expected" ]; then
      echo "$unit: mail from $from got [$got], not [$expected]"
      return 1
    fi
    [ -n "$expected" ] || continue
    { grep -v '^miltertest:' <<<"$out"
      printf 'From: %s\nTo: probe@mailfleet.invalid\nSubject: mailfleet signing probe\n\nmailfleet signing probe\n' "$from"
    } >"$dir/signed.eml"
    chmod 0644 "$dir/signed.eml"
    out=$(runuser -u nobody -- opendkim -x "$dir/verify.conf" -t "$dir/signed.eml" -vv 2>&1 || true)
    passed=$(grep -c 'dkim=pass' <<<"$out" || true)
    if [ "$passed" != "$(awk -F';' '{ print NF }' <<<"$expected")" ] || grep -q 'dkim=fail' <<<"$out"; then
      echo "$unit: the signatures on mail from $from do not verify against the installed keys: $(grep -E 'verification|dkim=' <<<"$out" | tr '\n' ' ')"
      return 1
    fi
  done
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

# How this host's Postfix package runs instances under systemd, read from its unit files rather
# than guessed from the release:
#   postmulti   postfix@.service runs `postmulti -i %i` (Debian 12, Ubuntu 22.04 and 24.04): the
#               default instance is postfix@-, instance postfix-43 is postfix@postfix-43.
#   config-dir  postfix@.service sets MAIL_CONFIG=/etc/postfix-%I (Debian 13, Postfix 3.9.1-7 and
#               later): postfix.service is the default instance (it conflicts with postfix@-),
#               instance postfix-43 (/etc/postfix-43) is postfix@43, and postfix.service no longer
#               starts the others: each is enabled on its own. postfix.service's stop, restart and
#               reload reach every instance (PartOf, ReloadPropagatedFrom).
postfix_packaging=
detect_postfix_packaging() {
  local units found
  units=$(systemctl cat postfix@.service 2>/dev/null || true)
  if grep -Eq '^ExecStart=.*postmulti -i %i' <<<"$units"; then
    postfix_packaging=postmulti
  elif grep -Eq '^Environment=.*MAIL_CONFIG=/etc/postfix-%I' <<<"$units"; then
    postfix_packaging=config-dir
  else
    found=$(grep -E '^(ExecStart|Environment)=' <<<"$units" | tr '\n' ' ' || true)
    fail "host $(hostname) ($(os_name)) packages Postfix in a way mailfleet does not know: postfix@.service ${found:-is missing}. Supported: postfix@.service running 'postmulti -i %i' (Debian 12, Ubuntu 22.04/24.04) or setting MAIL_CONFIG=/etc/postfix-%I (Debian 13)"
  fi
}

os_name() {
  # shellcheck source=/dev/null
  (. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-${ID:-unknown}}") || echo "no /etc/os-release"
}

# postfix_unit NAME: the systemd unit that runs instance NAME ("-" is the default instance).
postfix_unit() {
  [ -n "$postfix_packaging" ] || detect_postfix_packaging
  case "$postfix_packaging:$1" in
    postmulti:*) echo "postfix@$1" ;;
    config-dir:-) echo postfix ;;
    config-dir:postfix-*) echo "postfix@${1#postfix-}" ;;
    *) fail "instance $1 has no systemd unit under $postfix_packaging packaging" ;;
  esac
}

# reload_unit UNIT: apply new configuration without a restart. On config-dir packaging,
# `systemctl reload postfix` reaches every instance, so the default instance is reloaded alone.
reload_unit() {
  if [ "$1" = postfix ] && [ "$postfix_packaging" = config-dir ]; then
    postmulti -i - -p reload >/dev/null
  else
    systemctl reload "$1"
  fi
}

# probe_auth_socket SOCKET: Dovecot runs and its auth listener for Postfix is there, a socket that
# only the postfix account opens. Retries for about ten seconds: a started Dovecot takes a moment.
probe_auth_socket() {
  local socket=$1 seen=''
  for _ in $(seq 20); do
    if ! systemctl is-active -q dovecot; then
      seen="dovecot is $(systemctl is-active dovecot || true)"
    elif [ ! -S "$socket" ]; then
      seen="no socket $socket"
    elif [ "$(stat -c %U:%G:%a "$socket")" != postfix:postfix:660 ]; then
      seen="$socket is $(stat -c %U:%G:%a "$socket"), not postfix:postfix:660"
    else
      return 0
    fi
    sleep 0.5
  done
  echo "$seen; $(journalctl -u dovecot -n 3 --no-pager -o cat 2>/dev/null | tr '\n' ' ')"
  return 1
}

# A step records what it installs afresh on every run, so a file it no longer installs (a retired
# key, a table that went away) drops out of the record instead of showing as drift.
if [ "$mailfleet_step" != - ] && [ -f "$checksum_list" ]; then
  # shellcheck disable=SC2016  # an awk program: $1 is awk's first field
  MAILFLEET_STEP_NAME=$mailfleet_step _rewrite_checksums '$1 != ENVIRON["MAILFLEET_STEP_NAME"]'
fi
