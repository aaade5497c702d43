"""How krea-dagster names and describes its assets; subclass it to use your own keys and groups.

``build_krea_image_assets`` asks the translator for one ``AssetSpec`` per role (the prompt
source, the validated prompts, the Krea jobs, the images) and builds the assets from those
specs, so anything a spec holds (key, group, owners, tags, description, metadata, kinds) is
yours to change::

    class MyTranslator(KreaTranslator):
        def get_asset_spec(self, props: KreaAssetProps) -> dg.AssetSpec:
            spec = super().get_asset_spec(props)
            return spec.replace_attributes(
                key=dg.AssetKey(["marketing", props.prefix, props.role]),
                owners=["team:creative-data"],
            )

Dependencies between the four assets are wired by the builder from the keys you return.
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
        "The batch's prompts validated against the `{model}` request schema, with a stable "
        "`prompt_key` per prompt and the estimated cost. Nothing is submitted when a row is invalid."
    ),
    "jobs": (
        "One Krea `{model}` job per prompt, recorded in the ledger before and after each POST; "
        "re-running pays only for prompts that have no live or completed job."
    ),
    "images": (
        "Verified images of the batch in the image store and the manifest table (one row per "
        "prompt: uri, size, sha256, cost, error)."
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
    """What the translator knows about one asset of a krea-dagster instance."""

    prefix: str
    role: Role
    model: str
    source: str


class KreaTranslator:
    """Default keys ``[prefix, role]``, group ``prefix``, kinds per role."""

    def get_asset_spec(self, props: KreaAssetProps) -> dg.AssetSpec:
        return dg.AssetSpec(
            key=dg.AssetKey([props.prefix, props.role]),
            group_name=props.prefix,
            description=_DESCRIPTIONS[props.role].format(model=props.model, source=props.source),
            kinds=_KINDS[props.role],
            metadata={"krea/model": props.model, "krea/prefix": props.prefix},
        )
