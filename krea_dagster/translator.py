"""How krea-dagster names and describes its assets; subclass it to use your own keys and groups.

The builder asks the translator for one ``AssetSpec`` per asset of a node: the prompt source
(a prompt-file folder), and for every step its validated prompts, its Krea jobs and its outputs
(the manifest). The assets are built from those specs, so anything a spec holds (key, group,
owners, tags, description, metadata, kinds) is yours to change::

    class MyTranslator(KreaTranslator):
        def get_asset_spec(self, props: KreaAssetProps) -> dg.AssetSpec:
            spec = super().get_asset_spec(props)
            return spec.replace_attributes(
                key=dg.AssetKey(["marketing", *spec.key.path]),
                owners=["team:creative-data"],
            )

Default keys: a step's outputs are ``[prefix, step]`` and its helpers ``[prefix, step_prompts]``
and ``[prefix, step_jobs]``; the single unnamed step of a prompt-file instance keeps
``[prefix, prompts]``, ``[prefix, jobs]`` and ``[prefix, images]``. Dependencies between the
assets are wired by the builder from the keys you return.
"""

from dataclasses import dataclass
from typing import Literal

import dagster as dg

__all__ = ["ROLES", "KreaAssetProps", "KreaTranslator", "Role"]

Role = Literal["prompt_source", "prompts", "jobs", "images"]
ROLES: tuple[Role, ...] = ("prompt_source", "prompts", "jobs", "images")

_DESCRIPTIONS: dict[str, str] = {
    "prompt_source": "Prompt files (CSV or Parquet) in `{source}`, one partition per batch.",
    "prompts": (
        "{step}The batch's rows rendered and validated against the `{model}` request schema "
        "(every referenced file read and hashed locally), with a stable `prompt_key` per prompt "
        "and the estimated cost. Nothing is uploaded or submitted when a row is invalid."
    ),
    "jobs": (
        "{step}One Krea `{model}` job per prompt, recorded in the ledger before and after each "
        "POST (referenced files uploaded once, just before); re-running pays only for prompts "
        "that have no live or completed job."
    ),
    "images": (
        "{step}Verified outputs of the batch in the image store and the manifest table (one row "
        "per row of the source: uri, size, sha256, cost, error)."
    ),
}
_KINDS: dict[str, set[str]] = {
    "prompt_source": {"file"},
    "prompts": {"pandas"},
    "jobs": {"krea"},
    "images": {"krea", "image"},
}


@dataclass(frozen=True)
class KreaAssetProps:
    """What the translator knows about one asset of a krea-dagster node."""

    prefix: str
    role: Role
    model: str
    source: str
    #: The step's name ("" for the single step of a prompt-file instance, and the source).
    step: str = ""


class KreaTranslator:
    """Default keys (see the module docstring), group ``prefix``, kinds per role."""

    def get_asset_key(self, props: KreaAssetProps) -> dg.AssetKey:
        if not props.step:
            return dg.AssetKey([props.prefix, props.role])
        if props.role == "images":
            return dg.AssetKey([props.prefix, props.step])
        return dg.AssetKey([props.prefix, f"{props.step}_{props.role}"])

    def get_asset_spec(self, props: KreaAssetProps) -> dg.AssetSpec:
        step = f"Step `{props.step}`: " if props.step else ""
        metadata = {"krea/model": props.model, "krea/prefix": props.prefix}
        if props.step:
            metadata["krea/step"] = props.step
        return dg.AssetSpec(
            key=self.get_asset_key(props),
            group_name=props.prefix,
            description=_DESCRIPTIONS[props.role].format(
                model=props.model, source=props.source, step=step
            ),
            kinds=_KINDS[props.role],
            metadata=metadata,
        )
