"""Fetch the Prompt-OIRL release and its question sources from their public repositories.

Files land in a raw folder laid out exactly like ``../shared/data`` (the layout the
importer reads), so a download and a local copy import the same way. Files already
present are kept, which makes an interrupted download resumable.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from oirl._atomic import atomic_path
from oirl.data.importers.prompt_oirl import _SVAMP_FOLDERS, DATASETS, LAYOUTS, PROMPTS, _outcome_files
from oirl.errors import OirlError

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
# (repository, branches to try in order, path prefix there) for each local top folder.
_SOURCES = {
    "prompt-oirl-llama2/chat_logs": ("holarissun/Prompt-OIRL", ("main", "master"), "llama_exps/llama2_chat_logs"),
    "prompt-oirl-llama2/critics": ("holarissun/Prompt-OIRL", ("main", "master"), "critics"),
    "gsm8k": ("openai/grade-school-math", ("master", "main"), "grade_school_math/data"),
    "svamp-mawps": ("arkilpatel/SVAMP", ("main", "master"), "data"),
}


def release_files(datasets: tuple[str, ...] = DATASETS) -> list[str]:
    """Relative paths (in the local layout) of every file the importer reads."""
    files = []
    chat_logs = Path("prompt-oirl-llama2/chat_logs")
    for dataset in datasets:
        for alias in PROMPTS:
            files += [str(path) for path, _, _ in _outcome_files(chat_logs, dataset, alias, LAYOUTS[dataset])]
        if dataset == "gsm8k":
            files += ["gsm8k/train.jsonl", "gsm8k/test.jsonl"]
        else:
            files += [f"svamp-mawps/{_SVAMP_FOLDERS[dataset]}/fold{i}/train.csv" for i in range(5)]
    return files


def remote_urls(relative: str, base_url: str) -> list[str]:
    """Candidate URLs of one local file, one per branch to try."""
    for local_prefix, (repo, branches, remote_prefix) in _SOURCES.items():
        if relative.startswith(local_prefix + "/"):
            rest = relative[len(local_prefix) + 1 :]
            return [f"{base_url.rstrip('/')}/{repo}/{branch}/{remote_prefix}/{rest}" for branch in branches]
    raise ValueError(f"no public source known for {relative}")


def download_release(
    raw_dir: str | Path, *, datasets: tuple[str, ...] = DATASETS, base_url: str | None = None, timeout: float = 60.0
) -> Path:
    """Download what the importer needs into ``raw_dir``; returns ``raw_dir``.

    ``base_url`` (or ``$OIRL_DOWNLOAD_BASE_URL``) replaces the raw GitHub host, which
    lets tests serve a local tree.
    """
    from tqdm import tqdm

    base_url = base_url or os.environ.get("OIRL_DOWNLOAD_BASE_URL", DEFAULT_BASE_URL)
    raw_dir = Path(raw_dir)
    wanted = [f for f in release_files(datasets) if not (raw_dir / f).is_file()]
    for relative in tqdm(wanted, desc="downloading Prompt-OIRL logs", unit="file", disable=not wanted):
        _fetch_first(remote_urls(relative, base_url), raw_dir / relative, timeout)
    return raw_dir


def _fetch_first(urls: list[str], target: Path, timeout: float) -> None:
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
                tmp.write_bytes(response.read())
            return
        except urllib.error.HTTPError as exc:
            errors.append(f"{url}: HTTP {exc.code}")
            if exc.code != 404:
                break
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            break
    raise OirlError(f"could not download {target.name}: {'; '.join(errors)}")
