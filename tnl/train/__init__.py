"""tnl.train: the DeepSpeed training program behind scripts/train.py (its configuration: tnl.config).

    dist.py        ranks from the launcher's environment, process group, small collectives
    optim.py       AdamW + weight-decay split, warmup/cosine LR, the generated DeepSpeed config
    trainer.py     the loop: train_step (skip non-finite steps), evaluate, fit with callbacks
    metrics.py     tokens/s, MFU (peak FLOP/s table), metrics.jsonl, console, wandb, tensorboard
    checkpoint.py  writing atomic DeepSpeed checkpoints + loader/RNG state, keep-last-k, resume checks (the format
                   and the readers: tnl.checkpoint_format)
    seeding.py     seeds and deterministic algorithms
    errors.py      SetupError, the one error of inputs found before training starts
    engine.py      TrainingRun: model, optimizer, engine, loaders, resume, save
    run.py         main(cfg) and the CLI (dry run, kernel settings, data preparation on first use, export at the end)
    export.py      a run's checkpoint -> Hugging Face directory (scripts/export_hf.py)
"""
