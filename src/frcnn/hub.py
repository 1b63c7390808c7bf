"""Published weights by name: the file of a torchvision model's ``DEFAULT`` weights, fetched once
through torchvision's weights API into torch's hub cache (``$TORCH_HOME/hub/checkpoints/``, under
the file name of the weights' URL) and read from there, with no network, ever after."""
from __future__ import annotations

import socket
from pathlib import Path

import torch

from .checkpoint import CheckpointError

# Seconds a download may wait on the network at a time. A black-holed connection then fails
# within this for each address the host resolves to (a CDN gives up to 8), so under a minute in
# all; a DNS failure is immediate.
DOWNLOAD_TIMEOUT_S = 6.0


def published_weights_url(name: str) -> str:
    """The URL of torchvision model ``name``'s ``DEFAULT`` weights; ValueError for a name
    torchvision does not publish weights under."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(name).DEFAULT.url
    except (ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"torchvision publishes no weights for {name!r}") from error


def cache_path(url: str) -> Path:
    """Where torch's hub cache keeps the file of ``url``: <hub dir>/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def published_weights_file(name: str) -> Path:
    """The local file of torchvision model ``name``'s ``DEFAULT`` weights: the cached one, else
    downloaded there with a progress bar (the SHA256 prefix in its name checked). CheckpointError
    naming the URL and the path to put the file at when it cannot be downloaded."""
    url = published_weights_url(name)
    path = cache_path(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = torch.hub.HASH_REGEX.search(path.name)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(path), digest.group(1) if digest else None, progress=True)
    except Exception as error:  # urllib, socket and hash failures all mean: no file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot download {url} ({reason}); without network, put the file at {path}") from error
    finally:
        socket.setdefaulttimeout(previous)
    return path
