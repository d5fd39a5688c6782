"""Push an unlearned model's folder (weights, configs, card, results) to the Hub; one clear error on failure.

The folder is uploaded as saved: weights in the source model's own format, its config and preprocessor or
pretrained config, the `README.md` card and `unlearning_results.json`. Nothing local is deleted or changed.
"""

import os
import shlex

import httpx2
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from transformers.utils import logging

from ..config import PBUConfig
from ..version import __version__
from .model_card import hub_repo_id

logger = logging.get_logger(__name__)

# Trainer checkpoints, TensorBoard logs and hf_pbu's run lock and staging area are working files, not part of the
# published model.
IGNORE_PATTERNS = ["checkpoint*/*", "runs/*", ".hf_pbu*"]
TOKEN_FIX = "log in with `hf auth login` (or `huggingface-cli login`), set HF_TOKEN, or pass `--hub_token`"


class HubPushError(RuntimeError):
    """The push to the Hub failed; the message names the fix. The local output folder is left as it was."""


def _push_error(reason: str, output_dir: str, repo_id: str) -> HubPushError:
    folder = os.path.abspath(output_dir)
    excludes = " ".join(f"--exclude '{pattern}'" for pattern in IGNORE_PATTERNS)
    return HubPushError(
        f"Could not push {folder} to the Hub repository {repo_id!r}: {reason}\n"
        "Nothing local was deleted or changed: the model, its card (README.md) and unlearning_results.json "
        f"are in {folder}. Push them later with `hf upload {repo_id} {shlex.quote(folder)} {excludes}`, with "
        f"`huggingface_hub.upload_folder(repo_id={repo_id!r}, folder_path={folder!r}, "
        f"ignore_patterns={IGNORE_PATTERNS!r})`, or by re-running with `--push_to_hub`."
    )


def _http_reason(err: HfHubHTTPError, repo_id: str) -> str:
    status = err.response.status_code
    detail = err.server_message or str(err).splitlines()[0]
    if status == 401:
        return f"the Hub rejected the token (HTTP 401: {detail}). Use a valid write token: {TOKEN_FIX}."
    if status == 403:
        return (
            f"the Hub refused the upload (HTTP 403: {detail}). The token has no write access to {repo_id!r}: "
            f"use a write token ({TOKEN_FIX}), or a namespace you own with `--hub_model_id <you>/<name>`."
        )
    if status >= 500:
        return f"the Hub failed to answer (HTTP {status}: {detail}). Retry later."
    return f"the Hub answered HTTP {status}: {detail}. Check `--hub_model_id` and the token's permissions."


def push_unlearned_model(
    output_dir: str, config: PBUConfig, commit_message: str = "Upload model unlearned with PBU (hf_pbu)"
) -> str:
    """Create (or reuse) `config.hub_model_id` and upload `output_dir` to it; return the repository URL.

    Uses `hub_token` (else the logged-in token), `hub_private_repo` and `hub_revision` as `TrainingArguments`
    define them. Raises `HubPushError` with the fix when there is no token, the Hub refuses, or the connection
    fails.
    """
    repo_id = hub_repo_id(output_dir, config)
    if not os.path.isdir(output_dir):
        raise HubPushError(f"Cannot push {output_dir!r}: it is not a folder. Save the model there first.")
    token = config.hub_token or get_token()
    if not token:
        raise _push_error(f"no Hugging Face token found. To push, {TOKEN_FIX}.", output_dir, repo_id)
    api = HfApi(token=token, library_name="hf_pbu", library_version=__version__)
    try:
        repo_url = api.create_repo(repo_id, private=config.hub_private_repo, exist_ok=True)
        if config.hub_revision:
            api.create_branch(repo_url.repo_id, branch=config.hub_revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=output_dir,
            revision=config.hub_revision,
            ignore_patterns=list(IGNORE_PATTERNS),
            commit_message=commit_message,
        )
    except OfflineModeIsEnabled as err:
        raise _push_error("HF_HUB_OFFLINE is set. Unset it to push.", output_dir, repo_id) from err
    except HfHubHTTPError as err:
        raise _push_error(_http_reason(err, repo_id), output_dir, repo_id) from err
    except ValueError as err:  # an invalid repo id, or card metadata the Hub rejects
        raise _push_error(f"the Hub refused the request: {err}", output_dir, repo_id) from err
    except (httpx2.TransportError, OSError) as err:
        reason = (
            f"the connection to the Hub failed ({type(err).__name__}: {err}). Check the network and retry."
        )
        raise _push_error(reason, output_dir, repo_id) from err
    logger.info(f"Pushed {output_dir} to {commit.commit_url}")
    return str(repo_url)
