#!/usr/bin/env python3
"""Picks the inputs that together cover the most libFuzzer features, greedily.

Usage: select_inputs.py CONTROL_FILE COUNT DEST_DIR [MAX_BYTES]

CONTROL_FILE comes from `<fuzz binary> -merge=1 -set_cover_merge=1 -merge_control_file=F
EMPTY_DIR INPUT_DIR` (set cover mode lists every feature of every input, not only new ones).
Each round takes the input adding the most code edges not yet covered, then the most
features (edge hit-count buckets; libFuzzer numbers them edge * 8 + bucket), then the smaller;
stops at COUNT inputs or when nothing adds any. Copies them to DEST_DIR (created if needed).
"""

import os
import shutil
import sys


def main() -> None:
    control, count, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    max_bytes = int(sys.argv[4]) if len(sys.argv) > 4 else None
    with open(control) as f:
        lines = f.read().splitlines()
    # Header: number of files, number of files in the first corpus, then the paths.
    n_files = int(lines[0])
    paths = lines[2 : 2 + n_files]
    features: dict[int, set[str]] = {}
    for line in lines[2 + n_files :]:
        fields = line.split()
        if fields and fields[0] == "FT":
            features[int(fields[1])] = set(fields[2:])
    edges = {i: {int(f) // 8 for f in fs} for i, fs in features.items()}
    sizes = {i: os.path.getsize(paths[i]) for i in features}
    candidates = {i for i in features if max_bytes is None or sizes[i] <= max_bytes}

    covered: set[str] = set()
    covered_edges: set[int] = set()
    chosen: list[int] = []

    def gain(i: int) -> tuple[int, int, int, int]:
        return (len(edges[i] - covered_edges), len(features[i] - covered), -sizes[i], -i)

    while len(chosen) < count and candidates:
        best = max(candidates, key=gain)
        if gain(best)[:2] == (0, 0):
            break
        chosen.append(best)
        candidates.discard(best)
        covered |= features[best]
        covered_edges |= edges[best]

    os.makedirs(dest, exist_ok=True)
    for i in chosen:
        shutil.copy(paths[i], dest)
    all_features = set().union(*features.values()) if features else set()
    all_edges = set().union(*edges.values()) if edges else set()
    print(
        f"selected {len(chosen)} of {len(features)} inputs "
        f"({sum(sizes[i] for i in chosen)} bytes), covering {len(covered_edges)} of "
        f"{len(all_edges)} edges, {len(covered)} of {len(all_features)} features"
    )


if __name__ == "__main__":
    main()
