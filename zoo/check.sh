#!/usr/bin/env bash
# Lay this bundle out as a MONAI Model Zoo entry in a fresh clone of the Zoo and run the Zoo's OWN CI checks on it,
# offline (package registries only). Zoo files are never edited: what the offline machine lacks is supplied by the
# environment (local git remotes, pip find-links, files placed where the Zoo's downloads would put them).
#
#   zoo/check.sh [model-zoo snapshot: a git dir or URL, default /work/.mirror/Project-MONAI+model-zoo/repo]
#
# Environment (all optional):
#   ZOO_WORK            work folder (clone, venv, logs)                  default /tmp/gf-screen-zoo
#   ZOO_PIP_FIND_LINKS  extra pip --find-links (e.g. a folder holding the torch cp310 wheels and its nvidia deps)
#   ZOO_PYTHON          Python 3.10 (the Zoo's CPU premerge Python)      default ~/.pyenv/versions/3.10.13/bin/python
#   ZOO_PYTHON38        python3.8 for pre-commit (the Zoo's default_language_version)
#   ZOO_SCHEMA          local copy of the metadata schema the Zoo downloads
#   ZOO_HOOKS_REPO      local copy of pre-commit/pre-commit-hooks (with tag v4.6.0)
#   ZOO_PROJECT         the bundle project                              default this script's repo
#   ZOO_LAYOUT          the layout script                                default <project>/zoo/layout.py
#   ZOO_LAYOUT_PYTHON   Python that runs it                              default the work folder's 3.10 venv
#   ZOO_BUNDLE_NAME     default pancancer_ct_lesion_screening;  ZOO_BRANCH  default gf-screen-bundle
#   ZOO_PYTYPE_SCOPE    bundle (default) or repo: what step 7 runs pytype over (see step_codeformat)
#   ZOO_FRESH_VENV=1    rebuild the venv even if it is complete
#
# Each step logs to $ZOO_WORK/logs/<step>.log; a PASS/FAIL table closes the run; the exit code is non-zero if any
# step failed (all steps run regardless).
set -euo pipefail

PROJECT=${ZOO_PROJECT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}   # the bundle project (this repo)
SNAPSHOT=${1:-/work/.mirror/Project-MONAI+model-zoo/repo}
[[ -e $SNAPSHOT ]] && SNAPSHOT=$(cd "$SNAPSHOT" && pwd)  # absolute, since steps run in other folders
WORK=${ZOO_WORK:-/tmp/gf-screen-zoo}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
NAME=${ZOO_BUNDLE_NAME:-pancancer_ct_lesion_screening}
BRANCH=${ZOO_BRANCH:-gf-screen-bundle}
PY310=${ZOO_PYTHON:-$HOME/.pyenv/versions/3.10.13/bin/python}
PY38=${ZOO_PYTHON38:-$HOME/.pyenv/versions/3.8.18/bin/python3.8}
SCHEMA=${ZOO_SCHEMA:-$PROJECT/../shared/schemas/meta_schema_20240725.json}
HOOKS_REPO=${ZOO_HOOKS_REPO:-/work/.mirror/pre-commit+pre-commit-hooks/repo}
LAYOUT=${ZOO_LAYOUT:-$PROJECT/zoo/layout.py}
PYTYPE_SCOPE=${ZOO_PYTYPE_SCOPE:-bundle}

ORIGIN=$WORK/origin.git   # stands in for github.com/Project-MONAI/model-zoo
ZOO=$WORK/model-zoo       # the PR checkout the Zoo's CI runs in
VENV=$WORK/venv310
LOGS=$WORK/logs
LAYOUT_PY=${ZOO_LAYOUT_PYTHON:-$VENV/bin/python}
mkdir -p "$LOGS"

# The bundle's own pins: torch goes in first so that nothing (monai, ignite) pulls another torch build.
read -r TORCH_VERSION MONAI_VERSION < <(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))
print(m["pytorch_version"], m["monai_version"])' "$PROJECT/metadata.json")

# Every python/pip below is the 3.10 venv's, as on the Zoo's runner after setup-python; nothing from the caller's
# environment (an activated project venv, PYTHONPATH) leaks in.
export VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH
unset PYTHONPATH PYTHONHOME
# The Zoo's own pip installs (premerge, runtests.sh) must see the local wheels too, so pass them as environment.
if [[ -n ${ZOO_PIP_FIND_LINKS:-} ]]; then
    export PIP_FIND_LINKS="${PIP_FIND_LINKS:+$PIP_FIND_LINKS }$ZOO_PIP_FIND_LINKS"
fi

# ---------------------------------------------------------------------------------------------------------------
step_clone() {  # 1. fresh clone; origin is a local bare repo holding dev only, as GitHub's would
    rm -rf "$ORIGIN" "$ZOO"
    git clone --quiet --bare --single-branch --branch dev "$SNAPSHOT" "$ORIGIN"
    # the premerge runs `git fetch origin dev <sha of HEAD>`: allow fetching by SHA like GitHub does
    git -C "$ORIGIN" config uploadpack.allowAnySHA1InWant true
    git clone --quiet --branch dev "$ORIGIN" "$ZOO"
    git -C "$ZOO" config user.name "zoo check" && git -C "$ZOO" config user.email "zoo-check@localhost"
    git -C "$ZOO" checkout --quiet -b "$BRANCH"
    git -C "$ZOO" log --oneline -1
}

step_venv() {  # 2. Python 3.10 venv with the bundle's torch (reused when complete)
    if [[ -z ${ZOO_FRESH_VENV:-} && -f $VENV/.complete ]] \
        && "$VENV/bin/python" -c "import sys, torch, monai, yaml
sys.exit(sys.version_info[:2] != (3, 10) or torch.__version__.split('+')[0] != '$TORCH_VERSION')"; then
        echo "reusing $VENV (complete; packages the premerge installed earlier are kept)"
    else
        rm -rf "$VENV"
        "$PY310" -m venv "$VENV"
        python -m pip install --upgrade pip wheel   # as the premerge workflow's "Install dependencies"
        # pip prefers the index's copy of a wheel that --find-links also has: try the local wheels alone first
        if [[ -z ${ZOO_PIP_FIND_LINKS:-} ]] || ! python -m pip install --no-index "torch==$TORCH_VERSION"; then
            python -m pip install "torch==$TORCH_VERSION"
        fi
        # layout.py reads the YAML configs with monai.bundle: the bundle's own monai pin (which the premerge's
        # installs then accept) and PyYAML (which requirements-dev.txt installs anyway)
        python -m pip install "monai==$MONAI_VERSION" pyyaml
        touch "$VENV/.complete"
    fi
    python -c "import sys, torch, monai; print(sys.version.split()[0], torch.__version__, monai.__version__)"
}

step_layout() {  # 3. the project's layout script writes and commits models/$NAME; then the PR is "opened"
    cd "$ZOO"
    local args=(--zoo "$ZOO")
    [[ $NAME != pancancer_ct_lesion_screening ]] && args+=(--name "$NAME")
    "$LAYOUT_PY" "$LAYOUT" "${args[@]}"
    [[ -n $(git ls-tree HEAD "models/$NAME/configs/metadata.json") ]] || { echo "models/$NAME not committed"; exit 1; }
    [[ $(git rev-parse HEAD) != $(git rev-parse origin/dev) ]] || { echo "layout committed nothing"; exit 1; }
    git status --short --ignored --untracked-files=all -- "models/$NAME" ci   # large files: present, not committed
    # files a .gitignore of the Zoo's (e.g. *.log) keeps out of the commit, other than the large files
    local f ignored=()
    while read -r f; do
        grep -q -F "${f#models/"$NAME"/}" "models/$NAME"/large_files.* 2>/dev/null || ignored+=("$f")
    done < <(git status --porcelain --ignored --untracked-files=all -- "models/$NAME" | sed -n 's/^!! //p')
    ((${#ignored[@]} == 0)) || echo "NOTE: ${#ignored[@]} file(s) left out by a .gitignore:" "${ignored[@]}"
    git push --quiet --force origin "$BRANCH"
    # GitHub's pull_request checkout is refs/pull/N/merge, a merge of the PR branch into dev, checked out detached
    git checkout --quiet --detach origin/dev
    git merge --quiet --no-ff --no-edit -m "Merge $BRANCH into dev" "$BRANCH"
    git push --quiet --force origin HEAD:refs/pull/1/merge
    git log --oneline -3
}

step_offline_standins() {  # 4. files the Zoo's CI would download, placed where its download_url then finds them
    cd "$ZOO/models"
    local url
    url=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["schema"])' "$NAME/configs/metadata.json")
    [[ $(basename "$url") == $(basename "$SCHEMA") ]] || { echo "metadata wants $url, have $SCHEMA"; exit 1; }
    # OFFLINE STAND-IN: ci/prepare_schema.py downloads the schema to models/<file name> (download_url skips an
    # existing file) and copies it to models/$NAME/eval/schema.json; both placed here, uncommitted
    cp "$SCHEMA" "$(basename "$url")"
    mkdir -p "$NAME/eval" && cp "$SCHEMA" "$NAME/eval/schema.json"
    # OFFLINE STAND-IN: large files were placed by layout.py; download_large_files checks their hash and skips
    python - "$NAME" <<'EOF'
import json, os, re, sys
root = sys.argv[1]
for name in ("large_files.yml", "large_files.yaml", "large_files.json"):
    path = os.path.join(root, name)
    if os.path.exists(path):  # no yaml module in the venv yet: the paths are read the simple way
        text = open(path).read()
        if name.endswith(".json"):
            files = [f["path"] for f in json.loads(text)["large_files"]]
        else:
            files = re.findall(r"^\s*-?\s*path:\s*[\"']?([^\"'\n]+?)[\"']?\s*$", text, re.M)
        for f in files:
            present = os.path.isfile(os.path.join(root, f))
            print(f"{root}/{f}: {'present' if present else 'MISSING: the CI would download it'}")
            assert present
EOF
    git -C "$ZOO" status --short
}

step_premerge_cpu() {  # 5. the Zoo's CPU premerge, unchanged
    cd "$ZOO"
    # its cleanup loop deletes everything in /opt/hostedtoolcache but Python: only harmless where that is absent
    [[ ! -e /opt/hostedtoolcache ]] || { echo "/opt/hostedtoolcache exists here: refusing to run the rm loop"; exit 1; }
    ./runtests.sh --clean   # as premerge-cpu.yml does first
    bash ci/run_premerge_cpu.sh changed
    # it exits 0 when it sees no changed bundle: insist that it verified ours
    grep -q "start verifying $NAME" "$LOGS/5-premerge-cpu.log" || { echo "premerge did not verify $NAME"; exit 1; }
}

step_verify_full() {  # 6. the full verification the GPU premerge (blossom) runs, here on CPU
    cd "$ZOO"
    export PYTHONPATH=$ZOO   # as run_premerge_gpu.sh's init_venv
    python ci/verify_bundle.py -b "$NAME" -m full
}

step_codeformat() {  # 7. code-format-check.yml: runtests.sh --codeformat -j 2
    cd "$ZOO"
    local rc=0 tool
    # Measured on this 2-core machine (shared, load ~7): `runtests.sh --pytype -j 2` over the whole repo (148 files
    # of models/ and ci/ at dev dfae206, before the bundle's own) checked 50 files in 9.5 min, ~30 min in all: over
    # the ~15 min budget. So by default runtests.sh runs isort, black and flake8 on the whole repo (one call each, so
    # that one failure does not hide the next: runtests.sh exits at the first), and pytype runs on the bundle folder
    # only, with runtests.sh's own command line. ZOO_PYTYPE_SCOPE=repo runs the workflow's exact
    # `./runtests.sh --codeformat -j 2`.
    if [[ $PYTYPE_SCOPE == repo ]]; then
        ./runtests.sh --codeformat -j 2
        return
    fi
    # The formatters are unpinned (requirements-dev.txt), so a newer release can flag files dev already has: a
    # failure counts against the PR only if it names a file the PR changes (or names none); otherwise it is a NOTE.
    local changed blamed ours out=$WORK/codeformat.out
    changed=$(git diff --name-only origin/dev...HEAD | sort -u)
    for tool in --isort --black --flake8; do
        ./runtests.sh "$tool" 2>&1 | tee "$out" && continue
        blamed=$(grep -oE "$ZOO/[^ :]+\.pyi?" "$out" | sed "s|^$ZOO/||" | sort -u || true)
        ours=$(comm -12 <(echo "$blamed") <(echo "$changed"))
        if [[ -z $blamed || -n $ours ]]; then
            rc=1 && echo "runtests.sh $tool: FAILED on the PR's files: ${ours:-(none named)}"
        else
            echo "NOTE: runtests.sh $tool fails only on files the PR does not change:" $blamed
        fi
    done
    echo "pytype on models/$NAME only (runtests.sh's invocation, with the bundle folder for \$(pwd))"
    python -m pytype --version
    if [[ -z $(find "models/$NAME" -name '*.py' -print -quit) ]]; then
        echo "SKIPPED pytype: no Python files in models/$NAME"   # pytype would stop at "Need an input"
    else
        PYTHONPATH=$ZOO python -m pytype -j 2 --python-version=3.10 "models/$NAME" || { rc=$?; echo "pytype: FAILED"; }
    fi
    return "$rc"
}

step_pre_commit() {  # 8. the Zoo's .pre-commit-config.yaml, unchanged, on the PR's changed files
    cd "$ZOO"
    # default_language_version is python3.8, and virtualenv 21 refuses to seed a 3.8 env ("the bundled seeder no
    # longer ships pip/setuptools for Python 3.8"): pre-commit runs from its own venv with virtualenv 20 (the last
    # line that seeds 3.8), and python3.8 is put on PATH under that name (pyenv's shim refuses it)
    local tools=$WORK/precommit-venv
    if ! "$tools/bin/python" -c "import pre_commit, virtualenv" 2>/dev/null; then
        rm -rf "$tools" && "$PY310" -m venv "$tools"
        "$tools/bin/python" -m pip install pre-commit "virtualenv<21"
    fi
    "$tools/bin/python" -m pip list 2>/dev/null | grep -i -E "^(pre.commit|virtualenv) "
    mkdir -p "$WORK/bin" && ln -sf "$PY38" "$WORK/bin/python3.8"
    export PATH=$WORK/bin:$PATH
    python3.8 --version
    # OFFLINE STAND-IN: the hooks repo is the local pre-commit-hooks copy. pre-commit drops GIT_CONFIG_GLOBAL from
    # its git calls but keeps GIT_CONFIG_COUNT/KEY/VALUE, so the url rewrite is passed that way.
    export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0="url.file://$HOOKS_REPO.insteadOf" \
        GIT_CONFIG_VALUE_0=https://github.com/pre-commit/pre-commit-hooks
    export PRE_COMMIT_HOME=$WORK/pre-commit-cache
    "$tools/bin/python" -m pre_commit run --show-diff-on-failure --color never --from-ref origin/dev --to-ref HEAD
}

step_unit_tests() {  # 9. the Zoo's unit test runner, as run_premerge_gpu.sh calls it
    cd "$ZOO"
    export PYTHONPATH=$ZOO   # as run_premerge_gpu.sh's init_venv
    python ci/unit_tests/runner.py --b "$NAME"
    if [[ -f ci/unit_tests/test_${NAME}_dist.py ]]; then
        local ngpu
        ngpu=$(python -c "import torch; print(torch.cuda.device_count())")
        if ((ngpu > 0)); then
            torchrun ci/unit_tests/runner.py --b "$NAME" --dist True
        else
            # the _dist tests launch torchrun --nproc_per_node=torch.cuda.device_count() with NCCL
            echo "SKIPPED test_${NAME}_dist.py: multi-GPU tests need CUDA GPUs; this machine has none"
        fi
    fi
}

# ---------------------------------------------------------------------------------------------------------------
STEPS=() RESULTS=() TIMES=()
run_step() {  # run_step <name> <function>: log to $LOGS/<name>.log, record PASS/FAIL and the time taken
    local name=$1 fn=$2 start=$SECONDS rc
    echo "==> $name (log: $LOGS/$name.log)"
    set +e
    (set -e; "$fn") >"$LOGS/$name.log" 2>&1   # a subshell, so that set -e works inside and cd/export stay local
    rc=$?
    set -e
    STEPS+=("$name") TIMES+=($((SECONDS - start)))
    if ((rc == 0)); then RESULTS+=(PASS); else RESULTS+=("FAIL (exit $rc)"); tail -n 15 "$LOGS/$name.log"; fi
    echo "    ${RESULTS[-1]} in $((SECONDS - start)) s"
}

run_step 1-clone step_clone
run_step 2-venv step_venv
run_step 3-layout step_layout
run_step 4-offline-standins step_offline_standins
run_step 5-premerge-cpu step_premerge_cpu
run_step 6-verify-full step_verify_full
run_step 7-codeformat step_codeformat
run_step 8-pre-commit step_pre_commit
run_step 9-unit-tests step_unit_tests

{
    echo
    printf '%-22s %-14s %8s\n' STEP RESULT SECONDS
    for i in "${!STEPS[@]}"; do printf '%-22s %-14s %8s\n' "${STEPS[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"; done
    grep -h -E "^(SKIPPED|NOTE)" "$LOGS"/*.log || true
    echo "zoo snapshot: dev $(git -C "$ORIGIN" rev-parse --short dev 2>/dev/null || echo '?')," \
        "checked HEAD $(git -C "$ZOO" rev-parse --short HEAD 2>/dev/null || echo '?') ($ZOO)"
    "$VENV/bin/python" -c "import sys, torch, monai
print(f'python {sys.version.split()[0]}, torch {torch.__version__}, monai {monai.__version__}')" 2>/dev/null \
        || echo "python/torch/monai: venv unusable"
    echo "logs: $LOGS"
} | tee "$LOGS/summary.txt"

[[ ! ${RESULTS[*]} =~ FAIL ]]

