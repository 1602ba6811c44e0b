"""The conversation and call control: the ARI client (ari/), each call's life on Asterisk (calls,
setup, turns, recovery), the script and its engine, leads in Redis, and the prompts' sound files.
Talks to Asterisk over ARI, to the audio path over the bus; imports runtime and intents.
"""
