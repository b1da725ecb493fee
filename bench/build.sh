# Sourced by the bench scripts (needs $root): builds what they run, unless SKIP_BUILD=1.
#   build_release TAG PACKAGE EXAMPLE...
# The release binaries under test first, then the load tools (examples of PACKAGE) in a separate
# build: in one invocation cargo would unify the dev-dependencies' features (tokio test-util)
# into the binaries under test.
build_release() {
    local tag=$1 pkg=$2
    shift 2
    [ "${SKIP_BUILD:-0}" = 1 ] && return 0
    echo "[$tag] cargo build --release -p ggrok-tunnel -p ggrok-server" >&2
    (cd "$root" && cargo build --release -p ggrok-tunnel -p ggrok-server >&2)
    local examples=()
    for e in "$@"; do examples+=(--example "$e"); done
    echo "[$tag] cargo build --release -p $pkg ${examples[*]}" >&2
    (cd "$root" && cargo build --release -p "$pkg" "${examples[@]}" >&2)
}
