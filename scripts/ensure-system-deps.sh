#!/usr/bin/env bash
# The system packages the test suite needs beyond Python, checked before `make test` and in CI:
#
#   browser   Chromium at /usr/bin/chromium (Debian package `chromium`): the Playwright tests
#   postgres  PostgreSQL's initdb/pg_ctl (package `postgresql`): the PostgreSQL variant of every
#             review-store test (or a server given by MEDCL_TEST_POSTGRES_URL)
#
# Missing ones are installed with apt-get when this can (running as root, or with passwordless
# sudo); otherwise it stops with exit code 1 and the one command to run. Environment:
#
#   MEDCL_ALLOW_SKIP=browser,postgres   run without them on purpose (`all` for both): their tests
#                                       then skip, and this says so loudly
#   MEDCL_SYSTEM_DEPS_INSTALL=never     only check, never run apt-get (default: auto)
#   MEDCL_SYSTEM_DEPS_ROOT=DIR          look for the files under DIR instead of / (for its tests)
set -euo pipefail

root="${MEDCL_SYSTEM_DEPS_ROOT:-}"
install_mode="${MEDCL_SYSTEM_DEPS_INSTALL:-auto}"
allow_raw="${MEDCL_ALLOW_SKIP:-}"

say() { printf 'system deps: %s\n' "$*"; }
fail() { printf 'system deps: %s\n' "$1" >&2; exit "${2:-1}"; }

case "$install_mode" in
  auto | never) ;;
  *) fail "MEDCL_SYSTEM_DEPS_INSTALL must be auto or never, got '$install_mode'" 2 ;;
esac

allow_browser=0
allow_postgres=0
IFS=',' read -r -a allow_items <<< "$allow_raw"
for item in "${allow_items[@]}"; do
  item="${item// /}"
  case "$item" in
    "") ;;
    browser) allow_browser=1 ;;
    postgres) allow_postgres=1 ;;
    all) allow_browser=1; allow_postgres=1 ;;
    *) fail "MEDCL_ALLOW_SKIP: unknown name '$item' (valid: browser, postgres, all)" 2 ;;
  esac
done

have_browser() { [ -x "$root/usr/bin/chromium" ]; }

have_postgres() {
  [ -n "${MEDCL_TEST_POSTGRES_URL:-}" ] && return 0
  compgen -G "$root/usr/lib/postgresql/*/bin/initdb" > /dev/null || command -v initdb > /dev/null
}

# as root the tests run initdb as the `postgres` user, which the Debian package creates
postgres_user_missing() {
  [ -z "${MEDCL_TEST_POSTGRES_URL:-}" ] && [ "$(id -u)" = 0 ] && ! id postgres > /dev/null 2>&1
}

missing() {
  local out=()
  have_browser || [ "$allow_browser" = 1 ] || out+=(chromium)
  have_postgres || [ "$allow_postgres" = 1 ] || out+=(postgresql)
  echo "${out[@]:-}"
}

loud_opt_out() {
  local what="$1" tests="$2"
  say "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  say "!!! MEDCL_ALLOW_SKIP: $what is not installed and the $tests WILL BE SKIPPED"
  say "!!! (deliberate opt-out; unset MEDCL_ALLOW_SKIP to install it and run them)"
  say "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
}

read -r -a need <<< "$(missing)"
if [ "${#need[@]}" -gt 0 ]; then
  apt_cmd=()
  if [ "$install_mode" = auto ] && command -v apt-get > /dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt_cmd=(env DEBIAN_FRONTEND=noninteractive)
    elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
      apt_cmd=(sudo -n env DEBIAN_FRONTEND=noninteractive)
    fi
  fi
  if [ "${#apt_cmd[@]}" -eq 0 ]; then
    fail "missing ${need[*]} for the tests. Install with:

    sudo apt-get install -y ${need[*]}

  (or run without them on purpose: MEDCL_ALLOW_SKIP=browser,postgres make test)"
  fi
  say "installing ${need[*]} with apt-get"
  "${apt_cmd[@]}" apt-get update -qq
  "${apt_cmd[@]}" apt-get install -y -qq "${need[@]}"
  read -r -a need <<< "$(missing)"
  if [ "${#need[@]}" -gt 0 ]; then
    fail "apt-get ran, but ${need[*]} is still missing (is /usr/bin/chromium or initdb installed?)"
  fi
fi

if postgres_user_missing && have_postgres && [ "$allow_postgres" = 0 ]; then
  fail "running as root and there is no 'postgres' user to run initdb as. Create it with:

    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres"
fi

have_browser && say "Chromium: $root/usr/bin/chromium" || loud_opt_out "Chromium" "browser tests"
if [ -n "${MEDCL_TEST_POSTGRES_URL:-}" ]; then
  say "PostgreSQL: the server given by MEDCL_TEST_POSTGRES_URL"
elif have_postgres; then
  say "PostgreSQL: initdb found"
else
  loud_opt_out "PostgreSQL" "PostgreSQL variants of the review-store tests"
fi
