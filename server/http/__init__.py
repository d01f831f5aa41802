"""The HTTP edge: the OpenAI schema (pydantic), its conversion to the internal types, the routes, SSE."""
