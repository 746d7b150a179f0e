# What tools/train_net.py reads besides model, dataloader, optimizer and lr_multiplier (each is
# also a yacs key of the YAML configs, named in the comment).
import torch

train = dict(
    output_dir="./output",  # OUTPUT_DIR
    init_checkpoint="",  # MODEL.WEIGHTS
    max_iter=90000,  # SOLVER.MAX_ITER
    amp=dict(enabled=False, precision="auto"),  # SOLVER.AMP.ENABLED / .PRECISION ("auto", "float16", "bfloat16")
    clip_gradients=dict(enabled=False, clip_type="value", clip_value=1.0, norm_type=2.0),  # SOLVER.CLIP_GRADIENTS
    checkpointer=dict(period=5000),  # SOLVER.CHECKPOINT_PERIOD
    eval_period=5000,  # TEST.EVAL_PERIOD
    best_metric="bbox/AP",  # TEST.BEST_METRIC: picks model_best.pth ("" = none)
    device="cuda" if torch.cuda.is_available() else "cpu",  # MODEL.DEVICE
    seed=-1,  # SEED (-1: a new one each run)
)
