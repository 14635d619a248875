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


class CheckedLoadingMixin:
    """``from_pretrained`` that turns a corrupt or truncated weight file into a clear error naming the file."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from safetensors import SafetensorError

        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            raise OSError(
                f"The weights in {pretrained_model_name_or_path!s} are corrupt or incomplete ({error}). Save the model "
                "again with save_pretrained, or copy the directory again if it was transferred."
            ) from error


class ModelTypeCheckMixin:
    """Config mixin: refuse a ``config.json`` written for another model type instead of loading it half-way."""

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"This checkpoint's config.json has model_type={model_type!r}, but {cls.__name__} expects "
                f"{cls.model_type!r}. Load it with the matching class (or AutoModel), or point to a "
                f"{cls.model_type} checkpoint."
            )
        return super().from_dict(config_dict, **kwargs)
