"""verl loads a critic (value model) with ``attn_implementation="flash_attention_2"`` written into its loader
(``verl.utils.model.load_valuehead_model``), whatever the model config says; without the flash-attn package (every
CPU machine, and the GPU install of this project, whose actor runs on sdpa) the load fails and so does
``algorithm=ppo | spa_ppo``. This patch loads the value model with the attention the config asks for
(``critic.model.override_config.attn_implementation``: the actor's, sdpa unless overridden); with none set it keeps
verl's flash_attention_2. The replacement is verl 0.9.1's function with that one change, in both of its loads (the
token-classification head and trl's value-head fallback): the same change as ``patches/value_model_attention.patch``
at the top of the repository. The engine imports the loader by name inside the function, so replacing the module
attribute is enough."""

from __future__ import annotations

import functools

WHY = "critic (value model): load it with the configured attention, not a hard-coded flash_attention_2"
VERL_VERSIONS = ("0.9.1",)


def needed() -> bool:
    return True


def apply() -> bool:
    import verl.utils.model as vm

    original = vm.load_valuehead_model
    if getattr(original, "__threespo_patched__", False):
        return True

    @functools.wraps(original)
    def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

        attn_implementation = getattr(model_config, "_attn_implementation", None) or "flash_attention_2"
        try:
            return AutoModelForTokenClassification.from_pretrained(
                pretrained_model_name_or_path=local_path, torch_dtype=torch_dtype, config=model_config,
                attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
        except BaseException as e:  # verl's own handling: any failure falls back to trl's value head
            if not vm.is_trl_available():
                raise RuntimeError(
                    f"model({local_path}) is not a value head model, please install trl to make it valid") from e

        try:
            from trl.experimental.ppo import AutoModelForCausalLMWithValueHead  # type: ignore
        except ImportError:
            from trl import AutoModelForCausalLMWithValueHead  # type: ignore

        if type(model_config) in vm.AutoModelForVision2Seq._model_mapping.keys():  # noqa: SIM118 (verl's test)
            module_class = vm.AutoModelForVision2Seq
        else:
            module_class = AutoModelForCausalLM
        ori_model = module_class.from_pretrained(
            pretrained_model_name_or_path=local_path, torch_dtype=torch_dtype, config=model_config,
            attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
        if hasattr(model_config, "text_config"):  # vlm models
            ori_model.config.hidden_size = model_config.text_config.hidden_size
        model = AutoModelForCausalLMWithValueHead.from_pretrained(ori_model)
        vm.patch_valuehead_model(model)
        return model

    load_valuehead_model.__threespo_patched__ = True
    vm.load_valuehead_model = load_valuehead_model
    return True
