"""Make every saved checkpoint self-contained: loadable with ``trust_remote_code=True`` without this package.

``register_for_auto_class`` (done in ``__init__``) makes ``save_pretrained`` copy our flat module files next to the
weights; this mixin writes the complete ``auto_map`` (config, bare model and task head) into ``config.json``, and,
for the pipelines a model declares, writes ``custom_pipelines`` and copies the pipeline modules, exactly what a
pipeline's own ``save_pretrained`` would write. Then, in a process that has never imported this package,
``pipeline("translation", model=dir, trust_remote_code=True)`` and ``pipeline(model=dir, trust_remote_code=True)``
work.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from transformers.dynamic_module_utils import get_relative_import_files

from .input_checks import check_saved_json_files

# Keyword arguments of ``save_pretrained`` that only matter when pushing to the Hub.
_HUB_KWARGS = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr")


class RemoteCodeMixin:
    """Put before ``PreTrainedModel`` in the bases. Subclasses set:

    - ``_remote_auto_map``: Auto class -> ``"module.Class"``, written to ``config.auto_map``;
    - ``_remote_pipelines``: task -> ``{"impl": "module.PipelineClass", "pt": ["AutoModelFor..."]}``, written to
      ``config.custom_pipelines`` (the format of ``Pipeline.save_pretrained``); ``module.py`` is looked up next to
      the model's own module file and copied with its relative imports.
    """

    _remote_auto_map: dict[str, str] = {}
    _remote_pipelines: dict[str, dict[str, Any]] = {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._remote_auto_map}
        pipeline_files = self._declare_remote_pipelines()
        # transformers uploads only the files its own save writes, so a push happens after our files are copied.
        push_to_hub = kwargs.pop("push_to_hub", False)
        hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KWARGS if key in kwargs}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = args[0] if args else kwargs.get("is_main_process", True)
        if self.should_save_on_this_rank(is_main_process):
            for source in pipeline_files:
                destination = Path(save_directory) / source.name
                if not (destination.exists() and os.path.samefile(source, destination)):
                    shutil.copyfile(source, destination)
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self.push_to_hub(repo_id, **hub_kwargs)
        return result

    def _declare_remote_pipelines(self) -> list[Path]:
        """Write ``config.custom_pipelines`` for every pipeline whose code can be found; return the files to copy."""
        if not self._remote_pipelines:
            return []
        custom_pipelines = dict(getattr(self.config, "custom_pipelines", None) or {})
        files: list[Path] = []
        for task, info in self._remote_pipelines.items():
            module_file = self._find_pipeline_module(info["impl"].rsplit(".", 1)[0])
            if module_file is None:
                warnings.warn(
                    f"The code of the {task!r} pipeline ({info['impl']}) was not found, so the saved checkpoint will "
                    f"not declare it; pipeline({task!r}, model=dir, trust_remote_code=True) will not work from it."
                )
                continue
            custom_pipelines[task] = copy.deepcopy(info)
            files += [module_file, *(Path(f) for f in get_relative_import_files(module_file))]
        if custom_pipelines:
            self.config.custom_pipelines = custom_pipelines
        return list(dict.fromkeys(files))

    def _find_pipeline_module(self, module_name: str) -> Optional[Path]:
        """``module_name.py`` next to this model's module file, else in the directory the model was loaded from.

        The second place matters for a model that was itself loaded with ``trust_remote_code=True``: only the
        modules it imports were copied into the dynamic-modules cache, not the pipeline's.
        """
        candidates = [Path(sys.modules[type(self).__module__].__file__).parent]
        loaded_from = getattr(self.config, "_name_or_path", "") or ""
        if loaded_from and os.path.isdir(loaded_from):
            candidates.append(Path(loaded_from))
        for directory in candidates:
            module_file = directory / f"{module_name}.py"
            if module_file.is_file():
                return module_file
        return None


class CheckedLoadingMixin:
    """``from_pretrained`` that turns a corrupt or truncated weight file into a clear error naming the file, and
    warns when the code saved beside the weights is too old for the installed transformers."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from safetensors import SafetensorError

        # transformers >= 5.25 kernelizes every loaded model unless told otherwise: on CUDA (ROCm, XPU) it swaps the
        # forward of transformers' GELUActivation / SiLUActivation, which our FeedForward uses, for code downloaded
        # from the hub. That would silently change a textbook layer's numerics and hide it from the fast path, so our
        # models load as they were saved; `use_kernels=True` still asks for the hub kernels explicitly.
        kwargs.setdefault("use_kernels", False)
        # A damaged tokenizer.json (or config) is named with the fix, not left to a bare JSONDecodeError later (a
        # pipeline loads the tokenizer after the model).
        check_saved_json_files(str(pretrained_model_name_or_path))
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            raise OSError(
                f"The weights in {pretrained_model_name_or_path!s} are corrupt or incomplete ({error}). Save the model "
                "again with save_pretrained, or copy the directory again if it was transferred."
            ) from error
        check_no_meta_tensors(model[0] if isinstance(model, tuple) else model, pretrained_model_name_or_path)
        if stale_remote_code(pretrained_model_name_or_path):
            warnings.warn(
                f"The model code saved in {pretrained_model_name_or_path!s} predates transformers 5.24's rename of the "
                "KV cache (past_key_values -> cache). This package loads it correctly, but loading it with "
                "trust_remote_code=True where scratchformers is not installed decodes wrongly on transformers >= 5.24. "
                f"Run `scratchformers upgrade {pretrained_model_name_or_path!s}` to save the current code beside the "
                "weights.",
                UserWarning,
                stacklevel=2,
            )
        return model

    def set_use_kernels(self, use_kernels, *args, **kwargs):
        """Refuse an incomplete checkpoint before ``kernelize`` (run at the end of ``from_pretrained`` when kernels
        are asked for) meets its meta tensors and fails with an unrelated device error."""
        if use_kernels:
            check_no_meta_tensors(self, getattr(self.config, "name_or_path", "") or type(self).__name__)
        return super().set_use_kernels(use_kernels, *args, **kwargs)


def check_no_meta_tensors(model, source) -> None:
    """Refuse a model whose weights were not all in the checkpoint yet were not reported missing.

    transformers counts a tied weight as loaded when its partner is; when the checkpoint lacks the shared tensor
    itself (``model.shared.weight``), both stay on the meta device, with no report and no error until first use.
    Weights a ``device_map`` offloaded on purpose are left alone."""
    if set((getattr(model, "hf_device_map", None) or {}).values()) & {"disk", "meta"}:
        return
    names = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if names:
        raise OSError(
            f"The weights in {source!s} lack {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}: the checkpoint "
            "is incomplete (it was saved without them or edited). Save the model again with save_pretrained."
        )


def stale_remote_code(model_dir) -> bool:
    """Whether ``model_dir`` holds seq2seq model code from before the cache rename (it lacks ``compat.py``)."""
    directory = Path(str(model_dir))
    return (directory / "modeling_transformer.py").is_file() and not (directory / "compat.py").is_file()


def upgrade_remote_code(model_dir) -> list[str]:
    """Replace the model code and ``config.json`` saved in ``model_dir`` with what this installed package saves.

    The weights, generation config, tokenizer and every other file stay as they are. Returns the names of the
    files written. Needed for ``trust_remote_code=True`` loading of checkpoints saved by an older scratchformers.
    """
    import tempfile

    import transformers

    import scratchformers

    directory = Path(str(model_dir))
    config = transformers.AutoConfig.from_pretrained(directory)
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(scratchformers, architectures[0], None) if architectures else None
    if model_class is None:
        raise ValueError(
            f"{directory} does not hold a scratchformers model (config.json architectures={architectures}); only "
            "checkpoints of ScratchTransformer* and ScratchViT* models can be upgraded."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stale-code warning this function answers
        model = model_class.from_pretrained(directory)
    with tempfile.TemporaryDirectory(dir=directory) as fresh:
        model.save_pretrained(fresh)
        written = sorted(path.name for path in Path(fresh).iterdir() if path.suffix == ".py" or path.name == "config.json")
        for name in written:
            os.replace(Path(fresh) / name, directory / name)  # atomic per file: an interruption leaves old or new
    return written


def register_model_type(config_class) -> None:
    """Make ``config_class.model_type`` known to ``AutoConfig`` unless it is already (this package's own
    registration wins).

    Called where a configuration module is imported, which includes loading a checkpoint with
    ``trust_remote_code=True`` where this package is not installed: ``AutoTokenizer`` / ``AutoImageProcessor``
    ``.from_pretrained(dir)`` read ``config.json`` first, and an unknown model type with an ``auto_map`` would make
    them ask again whether to run the checkpoint's code.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if config_class.model_type not in CONFIG_MAPPING:
        AutoConfig.register(config_class.model_type, config_class)


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
