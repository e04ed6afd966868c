"""The language model at run time: its hosts (llama.cpp in-process, Ollama) and the prompts it is asked."""
