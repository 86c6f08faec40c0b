"""FLOPs and seconds of estimate, tail and one distillation step, with whatever mechest is importable.

Run it with two versions to compare them in one sitting (the machine is shared: read ratios, not absolutes):
    PYTHONPATH=OLD_CHECKOUT/src python benchmarks/engine_before_after.py > before.jsonl
    python benchmarks/engine_before_after.py > after.jsonl
It uses only calls that every mechest version since the factored engine has: ``estimate``, ``tail_probability``
and ``expected_loss``. Seconds are the fastest of --repeats runs (estimate: uncounted, ``count=False``, where the
version has it; earlier versions timed an uncounted run anyway); FLOPs are mechest's count.
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import fastest

from mechest import estimate, random_mlp
from mechest.flops import FlopCounter

try:  # the layered layout
    from mechest.estimators.distill import expected_loss
    from mechest.estimators.tail import tail_probability
except ImportError:  # earlier versions
    from mechest.distill import expected_loss  # type: ignore[no-redef]
    from mechest.tail import tail_probability  # type: ignore[no-redef]

SCHEMES = ((1, "simple", False), (2, "simple", False), (2, "augment", False), (3, "simple", True))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    net = random_mlp(256, 4, "relu", seed=0)
    for order, variant, factored in SCHEMES:
        result = estimate(net, "kprop", order=order, variant=variant, factored=factored)
        try:
            options = {"count": False}
            estimate(net, "kprop", order=order, variant=variant, factored=factored, **options)
        except TypeError:  # an earlier version: its own timing was already uncounted
            options = {}
        seconds = fastest(lambda: estimate(net, "kprop", order=order, variant=variant, factored=factored,
                                           **options), args.repeats)
        print(json.dumps({"what": "estimate", "scheme": f"K={order} {variant}" + (" factored" if factored else ""),
                          "flops": result.flops, "seconds": seconds}))
    for order, variant, factored in ((2, "augment", False), (3, "simple", True)):
        result = tail_probability(net, 4, 3.0, "saddlepoint", order=order, variant=variant, factored=factored)
        seconds = fastest(lambda: tail_probability(net, 4, 3.0, "saddlepoint", order=order, variant=variant,
                                                   factored=factored), args.repeats)
        print(json.dumps({"what": "tail saddlepoint layer 4", "scheme": f"K={order} {variant}"
                          + (" factored" if factored else ""), "flops": result.flops, "seconds": seconds}))
    teacher = random_mlp(256, 2, "relu", input_dim=32, output_dim=8, seed=0)
    student = random_mlp(64, 2, "relu", input_dim=32, output_dim=8, seed=0)
    for parameter in student.weights:
        parameter.requires_grad_(True)
    for order, factored in ((2, False), (3, True)):
        def step() -> None:
            loss = expected_loss(student, teacher, order, "simple", factored=factored)
            loss.backward()

        with FlopCounter() as counter:
            step()
        print(json.dumps({"what": "distill step (64 <- 256, 2 hidden)", "scheme": f"K={order} simple"
                          + (" factored" if factored else ""), "flops": counter.total,
                          "seconds": fastest(step, args.repeats)}))
    print(json.dumps({"what": "threads", "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
