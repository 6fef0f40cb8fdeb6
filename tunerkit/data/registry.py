"""The seed's dataset names and the public hub ids behind them."""

from __future__ import annotations

from tunerkit.errors import UserError
from tunerkit.options import did_you_mean

#: name -> hub dataset id (ModelScope/HF ids the seed's tool used)
DATASETS = {
    "ms-agent": "modelscope/ms_agent_for_agentfabric",
    "ms-bench": "iic/ms_bench",
    "cls-fudan-news-zh": "damo/zh_cls_fudan-news",
    "long-alpaca-12k": "AlekseyKorshuk/LongAlpaca-12k",
    "dureader-robust-zh": "modelscope/DuReader_robust-QG",
    "pileval": "mit-han-lab/pile-val-backup",
}


def check_name(name: str, key: str) -> None:
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'", key=key,
                        hint=did_you_mean(name, DATASETS) or "a registry name (tunerkit list), a local file, builtin:* or synthetic:*")


def load(name: str) -> list[dict]:
    hub_id = DATASETS[name]
    try:
        import datasets  # optional: only when a hub is reachable
    except ImportError:
        datasets = None
    if datasets is not None:
        try:
            ds = datasets.load_dataset(hub_id, split="train")
            from tunerkit.data.formats import to_messages

            return [to_messages(r) for r in ds]
        except Exception as err:  # offline, gated, renamed
            reason = str(err).splitlines()[0][:100]
    else:
        reason = "the datasets package is not installed"
    raise UserError(f"dataset '{name}' ({hub_id}) is not reachable: {reason}", key="dataset",
                    hint=f"download it and set dataset = \"path/to/{name}.jsonl\"")
