"""Function calling: the rules for tool definitions, the output formats models write calls in, the
streaming parser that turns a choice's text into OpenAI tool-call deltas, and the grammar that
enforces a call when one is required."""
