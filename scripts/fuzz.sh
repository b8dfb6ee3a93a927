#!/usr/bin/env bash
# Fuzzes the ClientHello/SNI parser, the config parser and secret substitution (cargo-fuzz,
# libFuzzer), one target at a time in one fuzzing process, then minimizes each corpus into
# fuzz/corpus-min/<target>, the committed part. Not run in CI; `cargo xtask fuzz` runs it.
# Needs the nightly toolchain and installs cargo-fuzz if missing.
#
#   FUZZ_SECONDS  seconds per target (default 600)
#   FUZZ_TARGETS  which targets, in order (default "client_hello config secrets")
#
# Exits non-zero, printing the input, when a target crashes (panic, timeout, OOM). Reproduce
# with `cargo +nightly fuzz run --fuzz-dir fuzz <target> <artifact>`; once fixed, keep the input
# in gateway-proto/testdata/fuzz-regressions/<target>/ so `cargo test -p gateway-proto --test
# fuzz_regressions` replays it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir="$root/fuzz"
seconds=${FUZZ_SECONDS:-600}
targets=${FUZZ_TARGETS:-client_hello config secrets}
# What fuzz/corpus-min keeps per target: small enough to commit.
max_kept_files=200
max_kept_bytes=4096

host=$(rustc +nightly -vV | sed -n 's/^host: //p')
cd "$fuzz_dir"

if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

max_len() {
    case $1 in
        client_hello) echo 20000 ;; # above MAX_HELLO_LEN (16 KiB), to reach its checks
        config) echo 8192 ;;
        secrets) echo 4096 ;;
        *) echo "fuzz.sh: unknown target $1" >&2; exit 2 ;;
    esac
}

# Hand-written and captured inputs, plus earlier findings, start each working corpus.
seed() {
    local target=$1 corpus=$2
    case $target in
        client_hello) cp -n "$root"/gateway-proto/testdata/client-hello/*.bin "$corpus"/ ;;
        config) cp -n "$fuzz_dir"/seeds/config/* "$corpus"/ ;;
        secrets) cp -n "$fuzz_dir"/seeds/secrets/* "$corpus"/ ;;
    esac
    local dir
    for dir in "$fuzz_dir/corpus-min/$target" "$root/gateway-proto/testdata/fuzz-regressions/$target"; do
        if [ -d "$dir" ]; then
            find "$dir" -maxdepth 1 -type f -exec cp -n {} "$corpus"/ \;
        fi
    done
}

# Prints libFuzzer's final stats and any crash input; fails if the run crashed.
report() {
    local target=$1 log=$2 status=$3 marker=$4
    echo "== $target: libFuzzer exit status $status; final stats:"
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs|^stat::' "$log" || true
    local crashes
    crashes=$(find "$fuzz_dir/artifacts/$target" -type f -newer "$marker" 2>/dev/null || true)
    if [ "$status" -ne 0 ] || [ -n "$crashes" ]; then
        echo "== $target CRASHED; from the fuzzer's report ($log):" >&2
        grep -E -A4 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer: (timeout|out-of-memory)|^SUMMARY' \
            "$log" | grep -v '^ *#[0-9]' | head -40 >&2 || tail -40 "$log" >&2
        local artifact
        for artifact in $crashes; do
            echo "-- $artifact ($(wc -c <"$artifact") bytes):" >&2
            od -A d -t x1z -v "$artifact" | head -40 >&2
        done
        return 1
    fi
}

# Writes to $3 the at most $4 inputs of directory $2 that together cover the most code of
# target $1 (libFuzzer measures each input, fuzz/select_inputs.py picks greedily).
select_inputs() {
    local target=$1 from=$2 to=$3 count=$4
    local control empty status=0
    control=$(mktemp)
    empty=$(mktemp -d)
    "${CARGO_TARGET_DIR:-$fuzz_dir/target}/$host/release/$target" -merge=1 -set_cover_merge=1 \
        -merge_control_file="$control" "$empty" "$from" \
        >>"$fuzz_dir/logs/$target-cmin.log" 2>&1 || status=$?
    if [ "$status" -eq 0 ]; then
        python3 "$fuzz_dir/select_inputs.py" "$control" "$count" "$to" "$max_kept_bytes"
    fi
    rm -rf "$control" "$empty"
    return "$status"
}

# Replaces fuzz/corpus-min/<target> with a set cover of the working corpus and the previous
# corpus-min (inputs of at most max_kept_bytes), cut to the max_kept_files covering the most.
minimize() {
    local target=$1 corpus=$2
    local work kept="$fuzz_dir/corpus-min/$target"
    work=$(mktemp -d)
    find "$corpus" "$kept" -maxdepth 1 -type f -size -$((max_kept_bytes + 1))c \
        -exec cp -n {} "$work"/ \; 2>/dev/null || true
    cargo +nightly fuzz cmin --fuzz-dir "$fuzz_dir" "$target" "$work" -- -set_cover_merge=1 \
        >"$fuzz_dir/logs/$target-cmin.log" 2>&1
    rm -rf "$kept"
    local summary
    summary=$(select_inputs "$target" "$work" "$kept" "$max_kept_files")
    echo "== $target: corpus-min: $summary"
    rm -rf "$work"
}

cargo +nightly fuzz build --fuzz-dir "$fuzz_dir"
mkdir -p logs
failed=0
for target in $targets; do
    corpus="$fuzz_dir/corpus/$target"
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$target"
    seed "$target" "$corpus"
    dict=()
    if [ -f "dicts/$target.dict" ]; then
        dict=("-dict=dicts/$target.dict")
    fi
    marker=$(mktemp)
    log="$fuzz_dir/logs/$target.log"
    echo "== $target: fuzzing for ${seconds}s (log: $log)"
    # -jobs=1 -workers=1: one fuzzing process, started by a supervising libFuzzer that sends
    # its output to ./fuzz-0.log and prints that file when it exits.
    status=0
    cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" "$corpus" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=10 \
        -jobs=1 -workers=1 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1 || status=$?
    rm -f fuzz-0.log
    if report "$target" "$log" "$status" "$marker"; then
        minimize "$target" "$corpus"
    else
        failed=1
    fi
    rm -f "$marker"
done
exit "$failed"
