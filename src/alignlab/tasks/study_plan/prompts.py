"""The study-plan task's prompts: phrasings of the seed's request by language, and their split.

The user's GRPO run (TRL, Qwen2.5-0.5B-Instruct) used one prompt asking for a three-bullet
study plan with a time in every bullet. This module widens it to 147 phrasings (Chinese and
English, many subjects, full- and half-width punctuation) and splits them deterministically into
train and held-out; `synthetic.py` writes answers to them.

Languages (`lang`, every prompt function takes it): `all` is the original table of 147 phrasings,
frozen in content, order and split so that earlier runs and the demo's numbers reproduce; `zh` is
its Chinese part; `en` its English part plus `EXTRA_EN`, English-only phrasings for English-only
models (more wordings and subjects), which `all` deliberately leaves out.

Deliberately left out: judging a completion (that is `rules.py`, kept separate so the checker is
not tuned to the prompts or the generator), file I/O, and global randomness: the split takes a seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from alignlab.errors import UserError
from alignlab.tasks.study_plan.rules import is_chinese

CANONICAL_PROMPT = ("请给我一个三点式学习计划，用 '-' 做 bullet，每一条都必须包含一个时间（如 30 分钟），"
                    "不要有多余解释，只输出三条 bullet。")

_ZH_TEMPLATES = (
    "请给我一个关于{s}的三点式学习计划，用 '-' 做 bullet，每一条都必须包含一个时间（如 30 分钟），"
    "不要有多余解释，只输出三条 bullet。",
    "帮我制定一个{s}学习计划:只要三条,每条用 - 开头并写明时长(比如 45 分钟),不要任何解释。",
    "我想学{s}，请列出三条学习安排；每条以“-”开头，并包含所需时间（例如 1 小时）。"
    "只输出这三条，不要别的内容。",
    "用三个 bullet(以 - 开头)给出{s}的学习计划,每条都要有时间,如 20分钟;不要开场白和总结.",
    "给我三条{s}的学习任务，格式为“- 任务（时间）”，只输出三行，不要解释。",
    "请为{s}写一个三步学习计划。要求：只输出 3 条以 '- ' 开头的 bullet，"
    "每条必须包含学习时长（如半小时），不要多余说明。",
    "列一个{s}的今日学习清单, 3 条, 每条以 '-' 开头且包含时间 (如 30 分钟), 除了这三条不要输出任何东西.",
    "{s}入门：请给出三点学习计划，每点用 - 开头，每点都写清楚花多少时间（例如 1.5 小时），"
    "不要解释，不要编号。",
    "请只输出三条以 - 开头的要点，组成一个{s}学习计划；每条都要含有时间，比如 40 分钟；不要多余的话。",
    "三条 bullet 就好:{s}学习计划,每条 '-' 开头,带上时间(如一个小时),别的都不要写。",
)
_EN_TEMPLATES = (
    "Give me a three-point study plan for {s}. Use '-' for bullets, every bullet must include a time "
    "(e.g. 30 minutes), no extra explanation, output only three bullets.",
    "Write a 3-bullet study plan for {s}: start each line with '-', include a duration in each "
    "(like 45 min), and nothing else.",
    "I want to learn {s}. List exactly three steps as '-' bullets, each with how long it takes "
    "(for example 1 hour); no intro, no summary.",
    "Plan my {s} study session in three bullets (use -), each with a time such as 20 minutes; "
    "output only the bullets.",
    "Three bullets only, each starting with '-' and containing a time (e.g., half an hour): "
    "a study plan for {s}. Do not explain.",
    "Create a short study plan for {s}; exactly 3 lines, each beginning with '-' and stating a "
    "duration (e.g. 1.5 hours); no other text.",
    "Help me study {s} today: give three '-' bullet points, each with a time estimate (like 25 min), "
    "and nothing besides those three bullets.",
)
# English-only wordings (the `en` selection): other verbs, politeness, orders of the constraints
# and ways of giving the example duration, so an English model meets more than one phrasing style.
_EN_EXTRA_TEMPLATES = (
    "Make me a study plan for {s} with exactly three bullet points. Start each with '-' and give each "
    "a time, e.g. 30 minutes. No explanations.",
    "List three things I should do to learn {s} (like 45 min), one per line, each line starting with '-'. "
    "Reply with the bullets only.",
    "Give me three '-' bullets for studying {s}, each with a time like 1 hour. Nothing else.",
    "Can you plan my {s} practice? Exactly three lines starting with '-', each saying how long it takes "
    "(e.g. 40 minutes). Skip any introduction.",
    "Three-step {s} study plan, please: '-' bullets only, every bullet with a duration such as 15 min, "
    "no commentary.",
    "Outline how to study {s} in 3 bullet points beginning with '-'; put a time in each one "
    "(e.g. 2 hours). Output nothing but the three bullets.",
    "I have an evening free for {s}. Give me a plan of exactly three bullets starting with '- ', each with "
    "a time estimate like 50 minutes, and no extra text.",
    "Reply with only three bullet points (each starting with '-') that make a {s} study plan; every "
    "bullet needs a time, for example 1.5 hours.",
)


@dataclass(frozen=True)
class Subject:
    """A study subject: its name in each language (None: not used there) and activities."""

    key: str
    zh: str | None
    en: str | None
    zh_activities: tuple[str, ...]  # at least 4, no digits and no duration words
    en_activities: tuple[str, ...]


def _subject(key: str, zh: str | None, en: str | None, zh_acts: str, en_acts: str) -> Subject:
    return Subject(key, zh, en, tuple(zh_acts.split("|")), tuple(en_acts.split("|")))


SUBJECTS = (
    _subject("python", "Python", "Python",
             "复习列表推导式和字典|写一个读取 CSV 的小脚本|做 LeetCode 简单题|阅读官方教程的函数章节",
             "review list comprehensions and dicts|write a small script that reads a CSV file|"
             "solve easy LeetCode problems|read the functions chapter of the official tutorial"),
    _subject("vocabulary", "英语单词", "English vocabulary",
             "背诵新单词并做词卡|复习昨天的单词|用新单词造句|听写单词并纠错",
             "learn new words with flashcards|review yesterday's words|write sentences with the new words|"
             "do a spelling dictation and fix mistakes"),
    _subject("linear_algebra", "线性代数", "linear algebra",
             "看矩阵乘法与行列式的讲解|做特征值相关习题|整理向量空间的笔记|复习线性变换的几何意义",
             "watch a lecture on matrix multiplication|solve eigenvalue exercises|"
             "summarise vector spaces in your notes|review the geometry of linear maps"),
    _subject("guitar", "吉他", "guitar",
             "练习 C、G、Am 和弦转换|跟节拍器练扫弦|弹一首简单的曲子|练习爬格子",
             "practise switching between C, G and Am chords|strum along with a metronome|"
             "play through a simple song|do finger exercises on the fretboard"),
    _subject("kaoyan_math", "考研数学", None,
             "复习高数极限与连续|做一套真题选择题|整理错题本|背诵常用公式",
             "review limits and continuity|do a set of past-exam multiple-choice questions|"
             "go through your mistake notebook|memorise the key formulas"),
    _subject("machine_learning", "机器学习", "machine learning",
             "学习线性回归与梯度下降|用 scikit-learn 跑一个分类示例|精读一篇入门论文|复习过拟合与正则化",
             "study linear regression and gradient descent|run a classification example in scikit-learn|"
             "read an introductory paper|review overfitting and regularisation"),
    _subject("cooking", "烹饪", "cooking",
             "练习切菜的基本刀工|做一道番茄炒蛋|了解常用调料的用法|整理下周的菜谱",
             "practise basic knife skills|cook a simple tomato and egg dish|learn what the common spices do|"
             "plan next week's recipes"),
    _subject("japanese", "日语", "Japanese",
             "背诵五十音|跟读基础对话|学习动词变形|做听力练习",
             "memorise the kana|shadow a basic dialogue|study verb conjugation|do a listening exercise"),
    _subject("data_structures", "数据结构", "data structures",
             "复习链表与栈|手写二叉树遍历|做哈希表相关练习题|画出堆的插入过程",
             "review linked lists and stacks|implement binary tree traversals by hand|"
             "solve hash table exercises|draw how a heap insertion works"),
)
GENERIC = _subject("generic", None, None,
                   "明确学习目标并列出要点|集中学习核心内容|做练习巩固所学|复盘并整理笔记",
                   "set a clear goal and list the key topics|study the core material|"
                   "do practice exercises|review and tidy your notes")
# Subjects only the `en` selection's phrasings name (adding them to SUBJECTS would change `all`).
# Their Chinese names are None, but a user's Chinese prompt naming one still gets Chinese activities.
EN_SUBJECTS = (
    _subject("statistics", None, "statistics",
             "复习均值、方差和标准差|做假设检验练习题|用表格画出数据分布|读一章概率入门",
             "review mean, variance and standard deviation|solve hypothesis testing exercises|"
             "plot a data distribution in a spreadsheet|read a chapter on basic probability"),
    _subject("world_history", None, "world history",
             "读一章古代文明的历史|画出重大事件的时间线|整理一场战争的起因|看一部历史纪录片",
             "read a chapter on ancient civilisations|draw a timeline of major events|"
             "summarise the causes of a war|watch a history documentary"),
    _subject("public_speaking", None, "public speaking",
             "写一段简短的演讲稿|对着镜子练习演讲|录下自己的演讲并回看|练习开场和结尾",
             "write a short speech outline|rehearse the speech in front of a mirror|"
             "record yourself and watch it back|practise a strong opening and closing"),
    _subject("sql", None, "SQL",
             "复习 SELECT 和 WHERE 查询|练习多表连接|写分组统计的查询|设计一个小型数据库表",
             "review SELECT and WHERE queries|practise joining tables|write queries with GROUP BY|"
             "design a small database table"),
)


def _build_prompts() -> tuple[str, ...]:
    """Canonical prompt first, then Chinese templates x subjects, then English; deduplicated."""
    zh = [t.format(s=s.zh) for t in _ZH_TEMPLATES for s in SUBJECTS if s.zh]
    en = [t.format(s=s.en) for t in _EN_TEMPLATES for s in SUBJECTS if s.en]
    return tuple(dict.fromkeys([CANONICAL_PROMPT, *zh, *en]))


def _build_extra_english() -> tuple[str, ...]:
    """The original English templates x the English-only subjects, then the English-only templates
    x every English subject; deduplicated, none already in PROMPTS."""
    subjects = [s for s in (*SUBJECTS, *EN_SUBJECTS) if s.en]
    old = [t.format(s=s.en) for t in _EN_TEMPLATES for s in EN_SUBJECTS]
    new = [t.format(s=s.en) for t in _EN_EXTRA_TEMPLATES for s in subjects]
    return tuple(p for p in dict.fromkeys([*old, *new]) if p not in PROMPTS)


PROMPTS: tuple[str, ...] = _build_prompts()  # the `all` selection: frozen, see the module docstring
EXTRA_EN: tuple[str, ...] = _build_extra_english()
LANGS = ("all", "en", "zh")



def _of_lang(prompts: Sequence[str], lang: str) -> list[str]:
    """The prompts of one language (`all`: every one), order kept."""
    if lang not in LANGS:
        raise UserError(f"unknown prompt language {lang!r}; expected one of {', '.join(LANGS)}", key="lang")
    return list(prompts) if lang == "all" else [p for p in prompts if is_chinese(p) == (lang == "zh")]


def all_prompts(lang: str = "all") -> list[str]:
    """Every phrasing of `lang` in a stable order: `all` is PROMPTS (canonical first), `zh` its
    Chinese ones, `en` its English ones then EXTRA_EN."""
    return _of_lang(PROMPTS, lang) + (list(EXTRA_EN) if lang == "en" else [])


def _held_out_extra(prompt: str, held_out_fraction: float, seed: int) -> bool:
    """EXTRA_EN's split: a phrasing's side hangs on its own text (and the seed) only, so adding
    phrasings later never moves an existing one between train and held-out, as a shuffle would."""
    digest = hashlib.sha256(f"{seed}\n{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < held_out_fraction * 2**64


def split_prompts(held_out_fraction: float = 0.25, seed: int = 0, lang: str = "all") -> tuple[list[str], list[str]]:
    """(train, held_out) of `all_prompts(lang)`: disjoint, covering it, each in its order; the
    canonical prompt is always in train. Same arguments -> same split.

    `zh` and `en` keep each PROMPTS phrasing on its side of the `all` split (a policy trained on
    `all` is never judged on its own train prompts by an `en` evaluation); EXTRA_EN is split
    phrasing by phrasing (`_held_out_extra`), held out with probability `held_out_fraction`.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise UserError(f"expected a fraction in [0, 1), got {held_out_fraction!r}", key="held_out_fraction")
    _of_lang((), lang)  # refuse an unknown language before any work
    others = list(range(1, len(PROMPTS)))  # index 0 is the canonical prompt
    random.Random(seed).shuffle(others)
    held = set(others[:round(held_out_fraction * len(PROMPTS))])
    train = _of_lang([p for i, p in enumerate(PROMPTS) if i not in held], lang)
    held_out = _of_lang([p for i, p in enumerate(PROMPTS) if i in held], lang)
    if lang == "en":
        extra_held = [_held_out_extra(p, held_out_fraction, seed) for p in EXTRA_EN]
        train += [p for p, h in zip(EXTRA_EN, extra_held, strict=True) if not h]
        held_out += [p for p, h in zip(EXTRA_EN, extra_held, strict=True) if h]
    return train, held_out


def train_prompts(lang: str = "all") -> list[str]:
    return split_prompts(lang=lang)[0]


def held_out_prompts(lang: str = "all") -> list[str]:
    return split_prompts(lang=lang)[1]


def subject_of(prompt: str) -> Subject:
    """The subject named in the prompt (longest name wins), or GENERIC."""
    lowered = prompt.lower()
    names = [(name, s) for s in (*SUBJECTS, *EN_SUBJECTS) for name in (s.zh, s.en) if name]
    for name, subject in sorted(names, key=lambda pair: -len(pair[0])):
        if name.lower() in lowered:
            return subject
    return GENERIC
