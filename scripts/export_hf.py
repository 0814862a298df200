"""Export a run's latest (or a given) DeepSpeed checkpoint as a Hugging Face directory with its tokenizer.

    python scripts/export_hf.py run_dir=runs/tiny [tag=step_00000100] [out_dir=runs/tiny/hf]

ZeRO partitions are consolidated into fp32 weights; the result loads with
AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True).
"""

import sys

from tnl.train.export import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
