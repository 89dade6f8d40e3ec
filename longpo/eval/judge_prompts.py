"""Judge prompts, verbatim: they are part of the protocol (a changed word changes the scores).

MT-Bench: lm-sys/FastChat fastchat/llm_judge/data/judge_prompts.jsonl, the four single-answer grading
prompts (Apache-2.0). "single-v1" judges turn 1, "single-v1-multi-turn" turn 2; questions of the
categories in `NEED_REF_CATS` use the "math" variants with the reference answers (FastChat common.py).
LongBench-Chat: THUDM/LongAlign LongBench_Chat/prompt_fs.txt and eval.py (Apache-2.0); the positional
`{}` fields of prompt_fs.txt are named here, in their order.
"""

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")

MT_BENCH_PROMPTS = {
    'single-v1': {
        "system_prompt": 'You are a helpful assistant.',
        "prompt_template": '[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Assistant\'s Answer]\n{answer}\n[The End of Assistant\'s Answer]',
    },
    'single-math-v1': {
        "system_prompt": 'You are a helpful assistant.',
        "prompt_template": '[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant\'s answer. Begin your evaluation by comparing the assistant\'s answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n[The Start of Assistant\'s Answer]\n{answer}\n[The End of Assistant\'s Answer]',
    },
    'single-v1-multi-turn': {
        "system_prompt": 'Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. You evaluation should focus on the assistant\'s answer to the second user question. Begin your evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n',
        "prompt_template": "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n<|The End of Assistant A's Conversation with User|>",
    },
    'single-math-v1-multi-turn': {
        "system_prompt": 'Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant\'s answer. You evaluation should focus on the assistant\'s answer to the second question. Begin your evaluation by comparing the assistant\'s answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".\n\n',
        "prompt_template": "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n<|The End of Assistant A's Conversation with User|>",
    },
}

LONGBENCH_CHAT_SYSTEM_PROMPT = "You're a good assistant at evaluating the quality of texts."
LONGBENCH_CHAT_PROMPT = (
    '[Instructions]\n'
    "You are asked to evaluate the quality of the AI assistant's answers to user questions as an impartial judge, and your evaluation should take into account factors including correctness (high priority), helpfulness, accuracy, and relevance. The scoring principles are as follows:\n"
    "1. Read the AI assistant's answer and compare the assistant's answer with the reference answer.\n"
    "2. Identify all errors in the AI Assistant's answers and consider how much they affect the answer to the question.\n"
    "3. Evaluate how helpful the AI assistant's answers are in directly answering the user's questions and providing the information the user needs. \n"
    "4. Examine any additional information in the AI assistant's answer to ensure that it is correct and closely related to the question. If this information is incorrect or not relevant to the question, points should be deducted from the overall score.\n"
    '\n'
    'Please give an overall integer rating from 1 to 10 based on the above principles, strictly in the following format:"[[rating]]", e.g. "[[5]]".\n'
    '\n'
    '[Question]\n'
    '{question}\n'
    '\n'
    '[Reference answer begins]\n'
    '{reference}\n'
    '[Reference answer ends]\n'
    '\n'
    "Below are several assistants' answers and their ratings:\n"
    '\n'
    "[Assistant's answer begins]\n"
    '{shot_1}\n'
    "[Assistant's answer ends]\n"
    '\n'
    'Rating: [[{score_1}]]\n'
    '\n'
    "[Assistant's answer begins]\n"
    '{shot_2}\n'
    "[Assistant's answer ends]\n"
    '\n'
    'Rating: [[{score_2}]]\n'
    '\n'
    "[Assistant's answer begins]\n"
    '{shot_3}\n'
    "[Assistant's answer ends]\n"
    '\n'
    'Rating: [[{score_3}]]\n'
    '\n'
    'Please rate the following assistant answers based on the scoring principles and examples above:\n'
    '\n'
    "[Assistant's answer begins]\n"
    '{answer}\n'
    "[Assistant's answer ends]\n"
    '\n'
    'Rating: '
)
