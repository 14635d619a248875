"""The one place where the transformers releases we admit differ for our code: the name of the KV cache.

transformers 5.24 renamed the cache that ``generate`` passes to ``forward`` and reads back from the model output,
from ``past_key_values`` to ``cache`` (``Seq2SeqLMOutput.cache``; ``.past_key_values`` stays as a deprecated alias
property). Our models take ``cache`` on every release; this module lets them speak the installed release's
dialect at the two boundaries, the arguments ``generate`` passes and the outputs it reads:

- ``accepts_cache_alias`` wraps a ``forward(cache=...)`` so that ``past_key_values=`` works too: on 5.24+ with
  transformers' own ``FutureWarning`` (exactly as its Marian/BART do), before 5.24 silently (it is the name
  ``generate`` passes there);
  It also refuses a ``Cache`` that arrives under a name ``forward`` does not read: a model that ignored it would
  decode every step without its past, i.e. garbage, which is what the 5.24 rename did to our previous release;
- ``cache_field(cache)`` gives the output-constructor keyword of the installed release, ``cache_of(output)`` reads it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

from transformers.cache_utils import Cache
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.utils.deprecation import deprecate_kwarg

#: The name of the cache in the installed transformers: ``"cache"`` from 5.24 on, ``"past_key_values"`` before.
CACHE_NAME = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"
OLD_CACHE_NAME = "past_key_values"


def accepts_cache_alias(forward: Callable) -> Callable:
    """Let ``forward(cache=...)`` also take ``past_key_values=`` (deprecated from transformers 5.24 on), and refuse
    a ``Cache`` passed under a keyword ``forward`` does not name (it would be swallowed by ``**kwargs``)."""
    named = set(inspect.signature(forward).parameters)

    @functools.wraps(forward)
    def checked(*args, **kwargs):
        for name, value in kwargs.items():
            if name not in named and isinstance(value, Cache):
                raise TypeError(
                    f"{forward.__qualname__} received a KV cache as {name!r}, a name it does not read (it reads "
                    "'cache', and 'past_key_values' before transformers 5.24). This transformers release is newer "
                    "than the ones scratchformers was tested on: install the versions of its constraints.txt, or "
                    "upgrade scratchformers."
                )
        return forward(*args, **kwargs)

    if CACHE_NAME == "cache":
        return deprecate_kwarg(OLD_CACHE_NAME, "5.40.0", new_name="cache")(checked)

    @functools.wraps(forward)
    def renamed(*args, **kwargs):
        if OLD_CACHE_NAME in kwargs:
            if kwargs.get("cache") is not None:
                raise ValueError("Pass the KV cache once: as cache=... or as past_key_values=..., not both.")
            kwargs["cache"] = kwargs.pop(OLD_CACHE_NAME)
        return checked(*args, **kwargs)

    return renamed


def cache_field(cache: Optional[Cache]) -> dict[str, Any]:
    """The keyword that puts ``cache`` into a transformers ``ModelOutput`` of the installed release."""
    return {CACHE_NAME: cache}


def cache_of(output: dict) -> Optional[Cache]:
    """The cache held by a model output (or by ``generate``'s model kwargs), whichever release made it."""
    return output.get(CACHE_NAME)


__all__ = ["CACHE_NAME", "accepts_cache_alias", "cache_field", "cache_of"]
