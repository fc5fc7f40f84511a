"""The skill reader: which skill a command asks for, read from the pretrained text tower's sentence embedding.

A push needs its direction turned into a side of the object to go to. The CLIP's projected text embedding,
trained to match colour and shape captions to image regions, keeps little of it: a linear probe on it names the
skill (reach, or push left / right / forward / back) of 93% of the training commands and 66% of held-out
phrasings (``docs/EXPERIMENT_LOG.md``, 2026-12-06). The text tower's own sentence embedding (the mean of its
token states before the projection) keeps it: the same probe names 100% and 91%.

The reader is that probe, a linear map from the L2-normalised sentence embedding to :data:`SKILLS` logits. It is
fitted once, before imitation, on training commands only (training phrasings of training combinations, each also
with random words dropped so no single frame word decides it, and optionally with WordNet verbs put into its frame,
:func:`filled_frame`, so a verb it never saw does not read as a direction) and then frozen inside the network: the
policy sees five probabilities (or, with ``skill_reader_hard``, the one skill read), not the sentence, so a new
phrasing changes what it does only through which skill it reads.

**Token reader** (``skill_reader_tokens``). A mean-pooled sentence lets one word outvote another: "displace"
alone reads as a push to the left (0.64), and "displace the red cube right" reads left. The token reader scores
every token state of the text tower with the same linear map and pools each skill's scores over the command's
tokens by log-sum-exp, so a skill is read where some token carries it and a word that carries none adds little.
A command without a direction word reads as a reach. On new verbs and on the validation words' commands it reads
99.9% / 100% of skills right, the mean-pooled reader 92.9% / 95.7% (``docs/EXPERIMENT_LOG.md``, 2026-12-07,
twenty-first session). Its logits are computed with the command's text embedding
(:class:`CommandSkillReader`), once per command, and the policy observes them (``command_skill_logits``).
This module never imports rclpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vla_ros.grounding.fusion import NUM_SKILLS

SKILLS = ("reach", "left", "right", "forward", "back")  # reach, then push in each direction
assert len(SKILLS) == NUM_SKILLS


def skill_index(task: str, direction: str | None) -> int:
    """The :data:`SKILLS` index of a reach (``direction`` None) or a push in ``direction``."""
    if task == "reach":
        return 0
    if task != "push" or direction not in SKILLS[1:]:
        raise ValueError(f"no skill for task {task!r} with direction {direction!r}")
    return SKILLS.index(direction)


def filler_words(instructions) -> list[str]:
    """Words to put into training frames: WordNet's verbs, less every word of the instruction file.

    Training words are left out (a filler "back" or "right" would contradict the label) and so is every word of a
    held-out phrasing or word split (:meth:`InstructionSet.heldout_vocabulary`): those never reach training.
    """
    from vla_ros.grounding.wordnet import verb_lemmas

    excluded = instructions.training_vocabulary() | instructions.heldout_vocabulary()
    return [w for w in verb_lemmas() if w not in excluded]


def filled_frame(frame: str, fillers, rng: np.random.Generator, rate: float = 0.5) -> str:
    """``frame`` with its own words (not placeholders) replaced by random fillers, and one inserted.

    Each word is replaced at ``rate``, and a filler goes in at a random place with probability ``rate``: the skill
    must come from the direction words (or their absence), whatever the verb and the words around it.
    """
    words = [fillers[rng.integers(len(fillers))] if not w.startswith("{") and rng.random() < rate else w
             for w in frame.split()]
    if rng.random() < rate:
        words.insert(int(rng.integers(len(words) + 1)), fillers[rng.integers(len(fillers))])
    return " ".join(words)


def training_commands(instructions, seed: int = 0, per_frame: int = 2, dropped_variants: int = 4,
                      drop_rate: float = 0.25, filled_variants: int = 0,
                      fillers=None) -> tuple[list[str], list[int]]:
    """Commands and skill indices to fit the reader: training frames, training combinations, nothing held out.

    Every training frame of both tasks fills ``per_frame`` times per training combination (and direction), the
    shape and direction synonyms drawn. Each command also comes ``dropped_variants`` times with each word dropped
    at ``drop_rate``, direction words kept (dropping one would change the label), and ``filled_variants`` times
    in its frame with words replaced and inserted by :func:`filled_frame` (``fillers``: :func:`filler_words` by
    default). Without fillers a reader fitted on six frames per task can take a new verb for a direction: it reads
    "displace the ... right" as a push to the left (``docs/EXPERIMENT_LOG.md``, 2026-12-07).
    """
    rng = np.random.default_rng(seed)
    if filled_variants and fillers is None:
        fillers = filler_words(instructions)
    direction_words = {w for phrases in instructions.direction_words.values() for p in phrases for w in p.split()}
    commands, labels = [], []
    for colour, shape in instructions.train_combos:
        for task in ("reach", "push"):
            for direction in ((None,) if task == "reach" else SKILLS[1:]):
                for frame in instructions.templates[task]["train"]:
                    for _ in range(per_frame):
                        command = instructions.format(frame, colour, shape, direction, rng)
                        label = skill_index(task, direction)
                        commands.append(command)
                        labels.append(label)
                        words = command.split()
                        for _ in range(dropped_variants):
                            kept = [w for w in words if w in direction_words or rng.random() >= drop_rate]
                            commands.append(" ".join(kept))
                            labels.append(label)
                        for _ in range(filled_variants):
                            filled = filled_frame(frame, fillers, rng)
                            commands.append(instructions.format(filled, colour, shape, direction, rng))
                            labels.append(label)
    return commands, labels


@dataclass
class SkillReaderFit:
    """A fitted reader: ``weight`` (len(SKILLS), width), ``bias`` (len(SKILLS),) and its training accuracy."""

    weight: torch.Tensor
    bias: torch.Tensor
    train_accuracy: float
    num_commands: int


def fit_skill_reader(sentences: torch.Tensor, labels, seed: int = 0, steps: int = 500, lr: float = 1e-2,
                     weight_decay: float = 1e-4) -> SkillReaderFit:
    """Multinomial logistic regression (Adam, full batch) of ``labels`` on L2-normalised ``sentences`` (N, W)."""
    x = F.normalize(torch.as_tensor(sentences, dtype=torch.float32), dim=-1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"sentences (N, W) and N labels needed, got {tuple(x.shape)} and {len(y)}")
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(x.shape[1], len(SKILLS))
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.01)
        linear.bias.zero_()
    optimiser = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(linear(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        accuracy = float((linear(x).argmax(-1) == y).float().mean())
    return SkillReaderFit(linear.weight.detach().clone(), linear.bias.detach().clone(), accuracy, len(y))


def token_skill_logits(states: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor) -> torch.Tensor:
    """The token reader's (B, 5) logits: each token state's linear skill scores, log-sum-exp pooled over tokens.

    ``states`` (B, L, W) the text tower's token states, ``mask`` (B, L) the real tokens; each state is
    L2-normalised first, as the sentence is for the mean-pooled reader.
    """
    if states.ndim != 3 or mask.shape != states.shape[:2] or not bool(mask.any(-1).all()):
        raise ValueError(f"token states (B, L, W) and a mask (B, L) with a token in every row needed, got "
                         f"{tuple(states.shape)} and {tuple(mask.shape)}")
    return pooled_skill_logits(states, mask, weight, bias)


def pooled_skill_logits(states: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor) -> torch.Tensor:
    """:func:`token_skill_logits` without the checks: tensor ops only, what the exported text graph traces."""
    scores = F.normalize(states.float(), dim=-1) @ weight.float().T + bias.float()
    return torch.logsumexp(scores.masked_fill(~mask.bool()[..., None], float("-inf")), dim=1)


def fit_token_skill_reader(states: torch.Tensor, mask: torch.Tensor, labels, seed: int = 0, steps: int = 500,
                           lr: float = 1e-2, weight_decay: float = 1e-4) -> SkillReaderFit:
    """Multinomial logistic regression of ``labels`` on :func:`token_skill_logits` (Adam, full batch).

    The same optimiser, steps and initialisation as :func:`fit_skill_reader`; only the pooling differs.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if states.ndim != 3 or len(states) != len(y) or len(y) == 0:
        raise ValueError(f"token states (N, L, W) and N labels needed, got {tuple(states.shape)} and {len(y)}")
    generator = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(len(SKILLS), states.shape[-1], generator=generator) * 0.01)
    bias = torch.nn.Parameter(torch.zeros(len(SKILLS)))
    optimiser = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    states, mask = states.float(), mask.bool()
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(token_skill_logits(states, mask, weight, bias), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        accuracy = float((token_skill_logits(states, mask, weight, bias).argmax(-1) == y).float().mean())
    return SkillReaderFit(weight.detach().clone(), bias.detach().clone(), accuracy, len(y))


def encode_token_batches(encoder, commands: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`ClipEncoder.encode_token_states` of many commands, padded to one length: (N, L, W), (N, L)."""
    parts = [encoder.encode_token_states(commands[i:i + batch_size]) for i in range(0, len(commands), batch_size)]
    length = max(states.shape[1] for states, _ in parts)
    states = torch.cat([F.pad(s, (0, 0, 0, length - s.shape[1])) for s, _ in parts])
    mask = torch.cat([F.pad(m, (0, length - m.shape[1])) for _, m in parts])
    return states, mask


def fit_from_encoder(encoder, instructions, seed: int = 0, filled_variants: int = 0,
                     tokens: bool = False) -> SkillReaderFit:
    """Fit the reader on :func:`training_commands` embedded by ``encoder``'s text tower.

    ``tokens``: the token reader on the tower's token states; otherwise the reader of its sentence embeddings.
    """
    commands, labels = training_commands(instructions, seed=seed, filled_variants=filled_variants)
    if tokens:
        states, mask = encode_token_batches(encoder, commands)
        return fit_token_skill_reader(states, mask, labels, seed=seed)
    sentences = torch.cat([encoder.encode_sentences(commands[i:i + 256]) for i in range(0, len(commands), 256)])
    return fit_skill_reader(sentences, labels, seed=seed)


class CommandSkillReader:
    """A token reader's logits for commands: what a token-reader policy observes (``command_skill_logits``).

    It reads the network's frozen reader (the fusion's ``skill_weight`` / ``skill_bias`` buffers, the same
    tensors: a fit copied into them is read at once) over ``encoder``'s token states, and keeps each command's
    logits (commands repeat for a whole episode).
    """

    def __init__(self, encoder, weight: torch.Tensor, bias: torch.Tensor, cache_size: int = 4096):
        if weight.shape != (len(SKILLS), encoder.sentence_dim) or bias.shape != (len(SKILLS),):
            raise ValueError(f"a token reader of this text tower is ({len(SKILLS)}, {encoder.sentence_dim}) weights "
                             f"and {len(SKILLS)} biases, got {tuple(weight.shape)} and {tuple(bias.shape)}")
        self.encoder, self.weight, self.bias = encoder, weight, bias
        self.cache_size = int(cache_size)
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def of_network(cls, network, encoder) -> "CommandSkillReader | None":
        """The reader of a network whose fusion reads skills from token states; None for any other network."""
        fusion = getattr(getattr(network, "features_extractor", None), "fusion", None)
        if not getattr(fusion, "skill_reader_tokens", False):
            return None
        return cls(encoder, fusion.skill_weight, fusion.skill_bias)

    def clear(self) -> None:
        """Forget cached logits (after the reader's weights changed)."""
        self._cache.clear()

    @torch.inference_mode()
    def logits(self, commands) -> torch.Tensor:
        """(B, 5) float32 logits of reach, push left / right / forward / back, on the CPU."""
        # keyed by the command as the text tower reads it (through the encoder's lexicon, which may change)
        readings = [self.encoder.reading(c) for c in commands]
        found = {r: self._cache[r] for r in readings if r in self._cache}
        missing = [r for r in dict.fromkeys(readings) if r not in found]
        if missing:
            states, mask = self.encoder.encode_token_states(missing)  # the lexicon leaves a reading unchanged
            weight, bias = self.weight.to(states.device, torch.float32), self.bias.to(states.device, torch.float32)
            found.update(zip(missing, token_skill_logits(states, mask, weight, bias).cpu()))
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            self._cache.update({r: found[r] for r in missing[: self.cache_size]})
        return torch.stack([found[r] for r in readings])

