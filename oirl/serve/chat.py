"""What the gateway does to a chat completions request: find the query, apply the prompt, set the arm.

The rule (README, "Gateway"):

* the query is the text of the request's **last** ``user`` message (a string, or the
  ``text`` parts of a content list joined by newlines);
* a prompt with a placeholder (``{query}``, or a ``{{name}}`` template variable as
  promptfoo's prompts have) gets the message in every placeholder, and that is the new
  message;
* a prompt without one is **appended** to the message after a newline: that is how the
  logs' prompts were used (Prompt-OIRL sent the question, then the prompt text, e.g.
  ``"…How many are left?\\nLet's think step by step: "``);
* the arm's ``model`` replaces the request's ``model``, and its ``params``
  (``temperature``, ``top_p``, ``max_tokens``) replace the request's: the arm is the
  decision. Everything else passes through unchanged.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from oirl.serve.problems import RequestRefused

#: ``{query}``, or a template variable ``{{ name }}`` (Jinja / Nunjucks, as promptfoo writes them).
PLACEHOLDER = re.compile(r"\{query\}|\{\{-?\s*[A-Za-z_]\w*\s*-?\}\}")


def last_user_message(body: Any) -> tuple[int, str]:
    """The index and text of the last user message; a :class:`RequestRefused` (422) naming what is wrong."""
    if not isinstance(body, dict):
        raise RequestRefused("the body must be a JSON object (an OpenAI chat completions request)", "type_error")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestRefused("`messages` must be a non-empty list", "missing_messages", ("body", "messages"))
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "user":
            text = message_text(message.get("content"))
            if text is None or not text.strip():
                raise RequestRefused("the last user message has no text", "no_user_text", ("body", "messages", index, "content"))
            return index, text
    raise RequestRefused("`messages` has no message with role \"user\" (its text is the query)", "no_user_message", ("body", "messages"))


def message_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)]
        return "\n".join(texts) if texts else None
    return None


def apply_prompt(prompt: str, message: str) -> str:
    """The message with the prompt applied (the module's rule)."""
    if PLACEHOLDER.search(prompt):
        return PLACEHOLDER.sub(lambda _: message, prompt)  # a function: backslashes in the message stay as they are
    return f"{message}\n{prompt}"


def upstream_body(body: dict[str, Any], index: int, prompt: str, arm: dict[str, Any]) -> dict[str, Any]:
    """The request to forward: message ``index`` with the prompt applied, the arm's model and parameters set."""
    out = dict(body)
    messages = list(body["messages"])
    message = dict(messages[index])
    content = message["content"]
    if isinstance(content, str):
        message["content"] = apply_prompt(prompt, content)
    else:  # a content list: the text parts become one, where the first was; images and the like stay
        parts = copy.deepcopy(content)
        texts = [i for i, part in enumerate(parts) if isinstance(part, dict) and part.get("type") == "text"]
        joined = "\n".join(parts[i]["text"] for i in texts)
        parts[texts[0]] = {**parts[texts[0]], "text": apply_prompt(prompt, joined)}
        message["content"] = [part for i, part in enumerate(parts) if i not in texts[1:]]
    messages[index] = message
    out["messages"] = messages
    if "model" in arm:
        out["model"] = arm["model"]
    out.update(arm.get("params", {}))
    return out
