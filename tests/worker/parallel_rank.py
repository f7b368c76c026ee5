"""Body of one rank in the tensor/pipeline-parallel tests (run in a spawned process)."""

from __future__ import annotations

import traceback

import torch
from infermesh_worker.model_runner import LoadSpec, ModelRunner
from infermesh_worker.plan_codec import decode_plan

from tests.worker.step_plans import StepPlanner

BLOCK_SIZE = 4
NUM_BLOCKS = 64
PROMPTS = {1: [5, 17, 99, 3, 42, 8, 120], 2: [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], 3: [200, 7]}
NEW_TOKENS = 5


def drive(runner: ModelRunner) -> tuple[dict[int, list[int]], list[torch.Tensor], list[list]]:
    """Runs the fixed scenario (batched prefill, chunked prefill, decodes); returns every sequence's
    outputs as this rank knows them, the logits the sampler saw, and the tokens each step returned."""
    captured: list[torch.Tensor] = []
    # The runner samples through sample_with_alternatives (top_logprobs), so the wrap sits there.
    original = runner.sampler.sample_with_alternatives

    def sample(logits, rows):
        captured.append(logits.detach().clone())
        return original(logits, rows)

    runner.sampler.sample_with_alternatives = sample
    planner = StepPlanner(BLOCK_SIZE, NUM_BLOCKS)
    for seq_id, prompt in PROMPTS.items():
        planner.add(seq_id, prompt)
    responses: list[list] = []
    schedule = {1: 7, 2: 4, 3: 2}
    for _ in range(NEW_TOKENS + 1):
        result = runner.execute(planner.records(schedule))
        responses.append([(t.seq_id, t.token_id) for t in result.tokens])
        # Every rank learns the sampled tokens (broadcast from the sampling rank), so take them from
        # this rank's own state rather than from the response, which only the sampling rank fills.
        for seq_id, seq in planner.sequences.items():
            known = runner.sequences[seq_id].token_ids
            seq.outputs = known[len(PROMPTS[seq_id]) :]
            seq.token_ids = list(known)
        schedule = planner.decode_all()
        if 2 not in schedule and planner.sequences[2].num_computed < len(PROMPTS[2]):
            schedule[2] = len(PROMPTS[2]) - planner.sequences[2].num_computed
    outputs = {seq_id: seq.outputs[:NEW_TOKENS] for seq_id, seq in planner.sequences.items()}
    return outputs, captured, responses


def run_rank(model_dir: str, tp: int, pp: int, rank: int, init_method: str, results) -> None:
    torch.set_num_threads(1)
    try:
        runner = ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=1 << 22, sampler_seed=0)
        spec = LoadSpec(
            model_path=model_dir,
            tp_size=tp,
            tp_rank=rank % tp,
            pp_size=pp,
            pp_rank=rank // tp,
            dist_init_method=init_method,
            dist_backend="gloo",
            block_size=BLOCK_SIZE,
        )
        runner.load_model(spec)
        runner.init_kv_cache(NUM_BLOCKS, 0)
        outputs, captured, responses = drive(runner)
        info = {
            "kv_heads": runner.model.shard.num_kv_heads,
            "kv_head_start": runner.model.shard.kv_head_start,
            "layers": (runner.model.shard.layer_start, runner.model.shard.layer_end),
        }
        # numpy arrays are pickled by value; a tensor would travel as shared memory that vanishes
        # with this process, so the parent could fail to read it once the rank has exited.
        logits = [t.numpy() for t in captured]
        results.put((rank, "ok", outputs, logits, responses, info))
        runner.shutdown()
    except BaseException:  # noqa: BLE001 - report any failure to the parent instead of hanging it
        results.put((rank, "error", traceback.format_exc(), None, None, None))


def run_rank_that_diverges(model_dir: str, rank: int, init_methods: list[str], results) -> None:
    """tp=2: in step 2 rank 1 gets a plan that contradicts its state, rank 0 the right one. Rank 1
    must refuse and leave the group so rank 0 is released from its all-reduce; then both join a new
    group (second init method) and serve again."""
    from infermesh.v1 import worker_pb2

    torch.set_num_threads(1)
    try:
        runner = ModelRunner(torch.device("cpu"), kv_cache_memory_bytes=1 << 22, dist_timeout_s=600.0)

        def load(init_method: str) -> StepPlanner:
            runner.load_model(
                LoadSpec(
                    model_dir, tp_size=2, tp_rank=rank, dist_init_method=init_method, block_size=BLOCK_SIZE
                )
            )
            runner.init_kv_cache(NUM_BLOCKS, 0)
            planner = StepPlanner(BLOCK_SIZE, NUM_BLOCKS)
            planner.add(1, PROMPTS[1])
            planner.record(runner.execute(planner.records({1: len(PROMPTS[1])})).tokens)
            for seq_id, seq in planner.sequences.items():
                seq.token_ids = list(runner.sequences[seq_id].token_ids)
            return planner

        planner = load(init_methods[0])
        plan = planner.plan(planner.decode_all())
        if rank == 1:
            plan = worker_pb2.StepPlan.FromString(plan.SerializeToString())
            plan.running_sequences[0].num_computed_tokens += 1
        errors = []
        for _ in range(2):  # the failed step, then a step on the abandoned group
            try:
                runner.execute(decode_plan(plan))
            except Exception as exc:  # noqa: BLE001 - the test inspects what each rank saw
                errors.append(f"{type(exc).__name__}: {exc}")
        planner = load(init_methods[1])
        results.put((rank, "ok", errors, runner.sequences[1].token_ids))
    except BaseException:  # noqa: BLE001
        results.put((rank, "error", traceback.format_exc(), None))
