"""Exporting a merged model to where people run small models: GGUF (llama.cpp, Ollama, LM Studio) and an Ollama
Modelfile. The merge (`python -m alpaca_qlora.merge --gguf f16|q8_0`) is the door."""
