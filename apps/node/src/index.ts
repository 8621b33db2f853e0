export { type Agent, AgentStartError, startAgent } from './agent.ts';
export { ConfigError, ConfigSchema, loadConfig, type NodeConfig, USAGE } from './config.ts';
