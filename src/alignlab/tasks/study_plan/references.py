"""Fluent compliant answers to the study-plan request, written by hand, in each language.

They pass every rule of the task, and they read as language: the coherence judge
(`eval/judge.py`) scores a policy's answers against these, never against the judge's own samples
(a model always finds its own text likely). Subject-neutral on purpose, so any phrasing of the
request can stand before them.

Left out: subject-specific references (a vocabulary plan before a vocabulary prompt).
"""

from __future__ import annotations

from alignlab.errors import UserError
from alignlab.tasks.study_plan.prompts import CANONICAL_PROMPT

EN_PROMPT = ("Give me a three-point study plan. Use '-' for bullets, every bullet must include a time "
             "(e.g. 30 minutes), no extra explanation, output only three bullets.")

EN = (
    ("- Review your notes from the last lesson for 30 minutes\n"
     "- Work through ten practice problems in 45 minutes\n"
     "- Summarise the key ideas on one page in 15 minutes"),
    ("- Read the next section of the textbook for 40 minutes\n"
     "- Do the exercises at the end of the section for 30 minutes\n"
     "- Go over the mistakes you made for 20 minutes"),
    ("- Watch one recorded lecture for 1 hour\n"
     "- Write down the main points from memory in 20 minutes\n"
     "- Test yourself with flashcards for 15 minutes"),
    ("- Skim the chapter headings and summaries for 10 minutes\n"
     "- Study the hardest topic in depth for 50 minutes\n"
     "- Explain it aloud in your own words for 10 minutes"),
    ("- Solve a past exam paper for 1.5 hours\n"
     "- Mark it against the answer key in 20 minutes\n"
     "- Revise the questions you got wrong for 40 minutes"),
    ("- Make a list of the topics you find difficult in 10 minutes\n"
     "- Practise the first two of them for 45 minutes\n"
     "- Review what you learned before bed for 15 minutes"),
    ("- Learn twenty new words with flashcards for 25 minutes\n"
     "- Use each of them in a sentence for 20 minutes\n"
     "- Review yesterday's words for 10 minutes"),
    ("- Read a short article on the subject for 20 minutes\n"
     "- Write a paragraph about what you read in 30 minutes\n"
     "- Check your writing for errors for 10 minutes"),
    ("- Go through the worked examples in the chapter for 45 minutes\n"
     "- Try similar problems on your own for 1 hour\n"
     "- Compare your answers with the solutions for 15 minutes"),
    ("- Plan today's goals in 5 minutes\n"
     "- Study in two focused blocks of 25 minutes each, 50 minutes in all\n"
     "- Write a short summary of your progress in 10 minutes"),
    ("- Listen to a podcast episode on the topic for 30 minutes\n"
     "- Note three questions it raised in 10 minutes\n"
     "- Look up the answers for 20 minutes"),
    ("- Redo the homework problems you found hard for 40 minutes\n"
     "- Ask a classmate to quiz you for 20 minutes\n"
     "- Tidy your notes for the week for 15 minutes"),
)
ZH = (
    ("- 复习上节课的笔记（30 分钟）\n"
     "- 完成十道练习题（45 分钟）\n"
     "- 用一页纸总结本章要点（15 分钟）"),
    ("- 阅读教材的下一节（40 分钟）\n"
     "- 做完这一节后面的习题（30 分钟）\n"
     "- 订正做错的题目（20 分钟）"),
    ("- 观看一节录播课（1 小时）\n"
     "- 凭记忆写下主要知识点（20 分钟）\n"
     "- 用单词卡自测（15 分钟）"),
    ("- 浏览本章的标题和小结（10 分钟）\n"
     "- 深入学习最难的一个知识点（50 分钟）\n"
     "- 用自己的话把它讲一遍（10 分钟）"),
    ("- 做一套往年真题（1.5 小时）\n"
     "- 对照答案批改（20 分钟）\n"
     "- 复习做错的题目（40 分钟）"),
    ("- 列出自己觉得难的内容（10 分钟）\n"
     "- 重点练习其中两项（45 分钟）\n"
     "- 睡前回顾今天学到的东西（15 分钟）"),
    ("- 用单词卡背二十个新单词（25 分钟）\n"
     "- 用每个单词造一个句子（20 分钟）\n"
     "- 复习昨天背过的单词（10 分钟）"),
    ("- 阅读一篇相关的短文（20 分钟）\n"
     "- 写一段读后感（30 分钟）\n"
     "- 检查并修改文中的错误（10 分钟）"),
    ("- 看懂书上的例题（45 分钟）\n"
     "- 独立完成类似的题目（1 小时）\n"
     "- 对照答案找出差距（15 分钟）"),
    ("- 制定今天的学习目标（5 分钟）\n"
     "- 专注学习两个时段，共 50 分钟\n"
     "- 写一段简短的学习总结（10 分钟）"),
    ("- 听一期相关的播客（30 分钟）\n"
     "- 记下三个想弄清楚的问题（10 分钟）\n"
     "- 查资料解答这些问题（20 分钟）"),
    ("- 重做作业中的难题（40 分钟）\n"
     "- 请同学考考自己（20 分钟）\n"
     "- 整理本周的笔记（15 分钟）"),
)


def reference_answers(lang: str = "all") -> list[tuple[str, str]]:
    """(prompt, fluent compliant answer) pairs in `lang` ("en", "zh" or "all": both).

    >>> len(reference_answers("en")), len(reference_answers("all"))
    (12, 24)
    """
    sets = {"en": [(EN_PROMPT, a) for a in EN], "zh": [(CANONICAL_PROMPT, a) for a in ZH]}
    if lang == "all":
        return sets["en"] + sets["zh"]
    if lang not in sets:
        raise UserError(f"expected one of all, en, zh, got {lang!r}", key="lang")
    return sets[lang]
