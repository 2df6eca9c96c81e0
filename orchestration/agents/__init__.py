"""Agent adapters: turn an AgentCall into an AgentResult, whatever the agent is."""
