"""The forecaster: encoders -> fusion -> backbone -> head, each part built by Hydra from conf/model/."""
