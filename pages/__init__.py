"""The app's pages: each module's ``build()`` adds its page's components to the current Blocks context.

Shared here: turning our typed errors into Gradio messages (the one place that does it), the ZeroGPU wrapper for
work that needs the GPU, and what the pages say about a method's weights.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from vos import runnable as vrunnable
from vos.device import DeviceUnavailable
from vos.errors import VosError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

GPU_QUEUE = "gpu"  # the concurrency_id of every event that runs methods: one job on the GPU at a time
GPU_DURATION_ENV = "VOS_GPU_SECONDS"  # ZeroGPU's time budget per job


# --------------------------------------------------------------------------------------------------------------
# Errors for users


def message_html(text: str) -> str:
    """A plain-text message for a Gradio modal (which renders HTML): escaped, line breaks kept."""
    return html.escape(text).replace("\n", "<br>")


def _as_gradio_error(err: BaseException, *, as_html: bool = True):
    import gradio as gr

    return gr.Error(message_html(str(err)) if as_html else str(err), print_exception=False)


USER_ERRORS = (VosError, DeviceUnavailable)


def user_errors(fn: F) -> F:
    """Decorate a page callback: our user-facing errors become a ``gr.Error`` modal with their message.

    Works for plain functions and generators; anything else propagates (Gradio shows it as an error and logs the
    traceback, which is what a bug deserves).
    """
    return _converting_errors(fn, as_html=True)


def api_errors(fn: F) -> F:
    """``user_errors`` for an API endpoint: the message goes as plain text (an API client shows it as it is, so
    HTML escapes would reach the user as ``&#x27;``)."""
    return _converting_errors(fn, as_html=False)


def _converting_errors(fn: F, *, as_html: bool) -> F:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except USER_ERRORS as err:
                raise _as_gradio_error(err, as_html=as_html) from None

        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            raise _as_gradio_error(err, as_html=as_html) from None

    return plain  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# ZeroGPU


def on_zero_gpu() -> bool:
    """True on a Hugging Face ZeroGPU Space (the GPU is lent per call, to functions wrapped by ``spaces.GPU``)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in {"1", "true"}


def gpu_task(fn: F) -> F:
    """``spaces.GPU(fn)`` when the ``spaces`` package is importable (Hugging Face Spaces), else ``fn`` unchanged.

    The time budget per call comes from $VOS_GPU_SECONDS (default 120 s).
    """
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    duration = int(os.environ.get(GPU_DURATION_ENV, "120"))
    log.info("running %s through spaces.GPU (duration %d s)", fn.__qualname__, duration)
    return spaces.GPU(duration=duration)(fn)


# --------------------------------------------------------------------------------------------------------------
# Weights, as the pages show them


# One answer for the pages, the CLI and the API (vos.runnable); re-exported here for the pages.
WeightsState = vrunnable.WeightsState
weights_state = vrunnable.weights_state
