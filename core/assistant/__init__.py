"""The support assistant: reading a shopper's question, answering it from live facts, and checking every
sentence of a reply."""
