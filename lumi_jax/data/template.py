"""The instruction template: how an instruction example is written as text.

The one instruction template (preparation, training, evaluation and `lumi generate --chat` all
use these functions, so the model is always asked in the shape it was taught):

    <BOS>Task: What is the first item?
    Input: shell, bee, kite
    Answer: shell<EOS>

The `Input:` line is left out when there is no input. Everything up to and including "Answer:"
is the PROMPT (loss weight 0); the response (with its leading space) and the EOS that ends it
are the TARGET (loss weight 1), so the model learns what to say and when to stop, never to echo
the question. A chat (a `messages` list) renders earlier turns as Task/Answer lines (a system
message as `System:`); one example is made per assistant turn, with the whole history before
it as its prompt.

Why this shape, and not alpaca's `### Instruction:` sections: each header is one token (every
tokenizer lumi trains holds the markers as pieces, TEMPLATE_MARKERS), so a sample-instructions
example is ~28 tokens with the tiny tokenizer where alpaca's headers alone would cost ~35 (a
tokenizer trained on simple stories has no '#' pieces): more examples per fine-tuning minute.
And every header ends with ": ", so each word of the input and of the answer is tokenised the
same way (as a space-prefixed piece, "▁shell"). Copying a word from the input into the answer is
then copying tokens, not learning a second spelling of each word (after a newline "shell" and
" shell" are different tokens).

Prompt and response are tokenised separately (the mask boundary then falls exactly between
tokens), so a generator must encode the prompt on its own too: `encode(format_prompt(...))`, with
a BOS in front, then decode until EOS and strip the leading space.
"""

from __future__ import annotations

from collections.abc import Sequence

INSTRUCTION_HEADER = "Task:"
INPUT_HEADER = "Input:"
SYSTEM_HEADER = "System:"
RESPONSE_MARKER = "Answer:"  # the prompt ends here; the target starts with a space
LINE_BREAK = "\n"
# Every tokenizer lumi trains holds these as single pieces (SentencePiece user-defined symbols),
# as chat models reserve tokens for their templates: one token per header instead of 3 to 5 byte
# and letter pieces when the pretraining text never had them (see lumi_jax/data/tokenizer.py).
TEMPLATE_MARKERS = (INSTRUCTION_HEADER, INPUT_HEADER, RESPONSE_MARKER, SYSTEM_HEADER)
CHAT_ROLES = ("system", "user", "assistant")


def _line(header: str, content: str) -> str:
    return f"{header} {content.strip()}"


def format_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the alpaca field name
    """The prompt of one single-turn example, ending with the response marker."""
    lines = [_line(INSTRUCTION_HEADER, instruction)]
    if input.strip():
        lines.append(_line(INPUT_HEADER, input))
    lines.append(RESPONSE_MARKER)
    return LINE_BREAK.join(lines)


def format_response(response: str) -> str:
    """The target text: the response after one space (see the module docstring)."""
    return " " + response.strip()


def format_example(instruction: str, input: str, response: str) -> tuple[str, str]:  # noqa: A002
    """(prompt, target) of a training example; the packer adds BOS before and EOS after."""
    return format_prompt(instruction, input), format_response(response)


def format_chat_prompt(messages: Sequence[dict]) -> str:
    """The prompt that asks for the next assistant turn after `messages`.

    `messages` is a list of {"role": "system" | "user" | "assistant", "content": str}, ending with
    a user turn. Earlier assistant turns appear as answered lines.
    """
    headers = {"system": SYSTEM_HEADER, "user": INSTRUCTION_HEADER, "assistant": RESPONSE_MARKER}
    lines = []
    for message in messages:
        if message["role"] not in headers:
            raise ValueError(f"unknown chat role {message['role']!r}; expected one of {CHAT_ROLES}")
        lines.append(_line(headers[message["role"]], message["content"]))
    lines.append(RESPONSE_MARKER)
    return LINE_BREAK.join(lines)


def chat_examples(messages: Sequence[dict]) -> list[tuple[str, str]]:
    """(prompt, target) for every assistant turn, each prompt holding the whole history before it."""
    examples = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            examples.append((format_chat_prompt(messages[:index]), format_response(message["content"])))
    return examples


def parse_example(text: str) -> tuple[str, str, str]:
    """(instruction, input, response) back from a rendered single-turn example (the inverse of
    format_prompt + format_response), for reading packed data and for tests of the round trip."""
    instruction_start = INSTRUCTION_HEADER + " "
    marker = LINE_BREAK + RESPONSE_MARKER
    if not text.startswith(instruction_start) or marker not in text:
        raise ValueError("not an example in the instruction template")
    prompt, response = text.rsplit(marker, 1)
    body = prompt[len(instruction_start):]
    instruction, _, input = body.partition(LINE_BREAK + INPUT_HEADER + " ")  # noqa: A001
    return instruction, input, response.strip()
