"""Fake of minerl/herobraine/env_spec.py (minerllabs/minerl v0.4.4): `EnvSpec`, whose `register()` puts the
env in gym's registry with the single-agent entry point, `kwargs={"env_spec": self}` and its step limit.
The real spec builds its spaces from handlers; this one takes them from `create_observation_space()` and
`create_action_space()`."""

import abc

import gym


class EnvSpec(abc.ABC):
    U_SINGLE_AGENT_ENTRYPOINT = "minerl.env._singleagent:_SingleAgentEnv"

    def __init__(self, name, max_episode_steps=None, reward_threshold=None, agent_count=None):
        self.name = name
        self.max_episode_steps = max_episode_steps
        self.reward_threshold = reward_threshold
        self.agent_count = 1 if agent_count is None else agent_count
        self.agent_names = ["agent_%d" % i for i in range(self.agent_count)]
        self.is_single_agent = self.agent_count == 1
        self._observation_space = self.create_observation_space()
        self._action_space = self.create_action_space()

    @property
    def observation_space(self):
        return self._observation_space

    @property
    def action_space(self):
        return self._action_space

    def to_string(self):
        return self.name

    @abc.abstractmethod
    def create_observation_space(self):
        pass

    @abc.abstractmethod
    def create_action_space(self):
        pass

    @abc.abstractmethod
    def determine_success_from_rewards(self, rewards: list) -> bool:
        raise NotImplementedError("subclasses must override determine_success_from_rewards()")

    def register(self, fake=False):
        reg_spec = dict(id=("Fake" if fake else "") + self.name, entry_point=self.U_SINGLE_AGENT_ENTRYPOINT,
                        kwargs={"env_spec": self}, max_episode_steps=self.max_episode_steps)
        if self.reward_threshold:
            reg_spec.update(dict(reward_threshold=self.reward_threshold))
        gym.register(**reg_spec)
