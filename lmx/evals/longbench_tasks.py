"""LongBench (v1) task table: prompt templates, generation lengths and metrics, as in THUDM/LongBench's
``config/dataset2prompt.json``, ``config/dataset2maxlen.json`` and ``eval.py``."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    template: str  # formatted with the item's fields: {context}, {input}
    max_new_tokens: int
    metric: str  # a key of lmx.evals.metrics.METRICS
    chat: bool = True  # pred.py skips the chat prompt for the few-shot and code tasks
    first_line: bool = False  # eval.py scores only the first line of these predictions
    stop_at_newline: bool = False  # pred.py stops samsum at "\n" (it would repeat "Dialogue" otherwise)


_QA_PASSAGES = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\n"
    "The following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me "
    "the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
)

TASKS = {t.name: t for t in [
    Task("narrativeqa", "You are given a story, which can be either a novel or a movie script, and a question. Answer "
         "the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\n"
         "Story: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single "
         "phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:", 128, "qa_f1"),
    Task("qasper", "You are given a scientific article and a question. Answer the question as concisely as you can, "
         "using a single phrase or sentence if possible. If the question cannot be answered based on the information "
         "in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or "
         "\"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the "
         "above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot "
         "be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no "
         "question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}"
         "\n\nAnswer:", 128, "qa_f1"),
    Task("multifieldqa_en", "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following "
         "question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: "
         "{input}\nAnswer:", 64, "qa_f1"),
    Task("multifieldqa_zh", "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，"
         "不要输出任何其他字词。\n\n问题：{input}\n回答：", 64, "qa_f1_zh"),
    Task("hotpotqa", _QA_PASSAGES, 32, "qa_f1"),
    Task("2wikimqa", _QA_PASSAGES, 32, "qa_f1"),
    Task("musique", _QA_PASSAGES, 32, "qa_f1"),
    Task("dureader", "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
         128, "rouge_zh"),
    Task("gov_report", "You are given a report by a government agency. Write a one-page summary of the report.\n\n"
         "Report:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:", 512, "rouge"),
    Task("qmsum", "You are given a meeting transcript and a query containing a question or instruction. Answer the "
         "query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above "
         "meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:", 512, "rouge"),
    Task("multi_news", "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n"
         "{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:", 512, "rouge"),
    Task("vcsum", "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：", 512, "rouge_zh"),
    Task("trec", "Please determine the type of the question below. Here are some examples of questions.\n\n{context}"
         "\n{input}", 64, "classification", chat=False, first_line=True),
    Task("triviaqa", "Answer the question based on the given passage. Only give me the answer and do not output any "
         "other words. The following are some examples.\n\n{context}\n\n{input}", 32, "qa_f1", chat=False,
         first_line=True),
    Task("samsum", "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}"
         "\n\n{input}", 128, "rouge", chat=False, first_line=True, stop_at_newline=True),
    Task("lsht", "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}", 64, "classification", chat=False,
         first_line=True),
    Task("passage_count", "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. "
         "Please carefully read these paragraphs and determine how many unique paragraphs there are after removing "
         "duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease "
         "enter the final count of unique paragraphs after removing duplicates. The output format should only "
         "contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ", 32, "count"),
    Task("passage_retrieval_en", "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine "
         "which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease "
         "enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", "
         "\"Paragraph 2\", etc.\n\nThe answer is: ", 32, "retrieval"),
    Task("passage_retrieval_zh", "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n"
         "下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：", 32,
         "retrieval_zh"),
    Task("lcc", "Please complete the code given below. \n{context}Next line of code:\n", 64, "code_sim", chat=False),
    Task("repobench-p", "Please complete the code given below. \n{context}{input}Next line of code:\n", 64, "code_sim",
         chat=False),
]}  # fmt: skip


def get_task(name: str) -> Task:
    """The task called ``name`` (LongBench-E's ``_e`` suffix accepted); unknown names are a ``ValueError``."""
    key = name[:-2] if name.endswith("_e") and name[:-2] in TASKS else name
    if key not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(sorted(TASKS))}, got {name!r}")
    return TASKS[key]
