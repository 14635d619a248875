"""Make every saved checkpoint self-contained: loadable with ``trust_remote_code=True`` without this package.

``register_for_auto_class`` (done in ``__init__``) makes ``save_pretrained`` copy our flat module files next to the
weights; this mixin writes the complete ``auto_map`` (config, bare model and task head) into ``config.json``.
"""

from __future__ import annotations


class RemoteCodeMixin:
    """Put before ``PreTrainedModel`` in the bases; subclasses set ``_remote_auto_map`` (Auto class -> module.Class)."""

    _remote_auto_map: dict[str, str] = {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._remote_auto_map}
        return super().save_pretrained(save_directory, *args, **kwargs)
