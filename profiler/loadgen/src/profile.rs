//! The named load profiles. Any value can be overridden on the command line.

use std::{fmt, str::FromStr, time::Duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// 10 miners, 30 s, 5 shares/min each, 2 s ramp-up
    #[default]
    Smoke,
    /// 100 miners, 60 s, 10 shares/min each, 10 s ramp-up
    Standard,
    /// 1000 miners, 120 s, 20 shares/min each, 30 s ramp-up
    Stress,
    /// 100 miners, 1 hour, 10 shares/min each, 10 s ramp-up
    Soak,
}

/// What a profile sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileSettings {
    /// Miners (stratum) or connections (HTTP).
    pub miners: usize,
    pub duration: Duration,
    /// Shares (stratum) or requests (HTTP) per minute per miner or connection.
    pub share_rate: f64,
    /// Miners start evenly spread over this time.
    pub ramp_up: Duration,
}

impl Profile {
    pub fn settings(self) -> ProfileSettings {
        let (miners, seconds, share_rate, ramp) = match self {
            Self::Smoke => (10, 30, 5.0, 2),
            Self::Standard => (100, 60, 10.0, 10),
            Self::Stress => (1000, 120, 20.0, 30),
            Self::Soak => (100, 3600, 10.0, 10),
        };
        ProfileSettings {
            miners,
            duration: Duration::from_secs(seconds),
            share_rate,
            ramp_up: Duration::from_secs(ramp),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Smoke => "smoke",
            Self::Standard => "standard",
            Self::Stress => "stress",
            Self::Soak => "soak",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("unknown profile {s:?}: use smoke, standard, stress or soak"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_the_issue_s_numbers() {
        let stress = Profile::Stress.settings();
        assert_eq!(stress.miners, 1000);
        assert_eq!(stress.duration, Duration::from_secs(120));
        assert_eq!(stress.share_rate, 20.0);
        assert_eq!(stress.ramp_up, Duration::from_secs(30));
        assert_eq!(Profile::Soak.settings().duration, Duration::from_secs(3600));
        assert_eq!("Standard".parse::<Profile>(), Ok(Profile::Standard));
        assert!("heavy".parse::<Profile>().is_err());
    }
}
