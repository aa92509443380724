//! The names in Service Config's `limits`, as an enum: a misspelt limit is a compile error
//! in the code and a refusal on the command line, never a lookup that silently finds
//! nothing.

/// One of Apple's service limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    /// Assets per association request.
    MaxAssets,
    /// Users per users request.
    MaxUsers,
    /// Length of the notification URL and of its token.
    MaxNotificationLength,
    /// clientUserIds per revoke request.
    MaxRevokeClientUserIds,
    /// clientUserIds per association request.
    MaxClientUserIds,
    /// Serial numbers per association request.
    MaxSerialNumbers,
    /// Serial numbers per revoke request.
    MaxRevokeSerialNumbers,
    /// Requests per second of one organisation.
    MaxRequestPerSecond,
    /// Subscriptions.
    MaxSubscriptions,
    /// clientUserIds per subscription.
    MaxSubscriptionClientUserIds,
    /// `mdmInfo.name` length.
    MaxMdmNameLength,
    /// `mdmInfo.metadata` length.
    MaxMdmMetadataLength,
    /// `mdmInfo.id` length.
    MaxMdmIdLength,
}

impl Limit {
    /// Every limit, with Apple's Service Config example value.
    pub const ALL: &'static [(Limit, i64)] = &[
        (Limit::MaxAssets, 25),
        (Limit::MaxUsers, 100),
        (Limit::MaxNotificationLength, 512),
        (Limit::MaxRevokeClientUserIds, 100),
        (Limit::MaxClientUserIds, 1000),
        (Limit::MaxSerialNumbers, 1000),
        (Limit::MaxRevokeSerialNumbers, 100),
        (Limit::MaxRequestPerSecond, 15),
        (Limit::MaxSubscriptions, 25),
        (Limit::MaxSubscriptionClientUserIds, 1000),
        (Limit::MaxMdmNameLength, 100),
        (Limit::MaxMdmMetadataLength, 255),
        (Limit::MaxMdmIdLength, 100),
    ];

    /// Apple's name, as in `limits`.
    pub fn name(self) -> &'static str {
        match self {
            Limit::MaxAssets => "maxAssets",
            Limit::MaxUsers => "maxUsers",
            Limit::MaxNotificationLength => "maxNotificationLength",
            Limit::MaxRevokeClientUserIds => "maxRevokeClientUserIds",
            Limit::MaxClientUserIds => "maxClientUserIds",
            Limit::MaxSerialNumbers => "maxSerialNumbers",
            Limit::MaxRevokeSerialNumbers => "maxRevokeSerialNumbers",
            Limit::MaxRequestPerSecond => "maxRequestPerSecond",
            Limit::MaxSubscriptions => "maxSubscriptions",
            Limit::MaxSubscriptionClientUserIds => "maxSubscriptionClientUserIds",
            Limit::MaxMdmNameLength => "maxMdmNameLength",
            Limit::MaxMdmMetadataLength => "maxMdmMetadataLength",
            Limit::MaxMdmIdLength => "maxMdmIdLength",
        }
    }

    /// The limit named `name` (Apple's spelling, exactly).
    pub fn parse(name: &str) -> Option<Limit> {
        Limit::ALL
            .iter()
            .map(|(l, _)| *l)
            .find(|l| l.name() == name)
    }

    /// Apple's example value.
    pub fn apple_default(self) -> i64 {
        Limit::ALL
            .iter()
            .find(|(l, _)| *l == self)
            .map(|(_, v)| *v)
            .expect("every limit is in ALL")
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Limit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Limit::parse(s).ok_or_else(|| {
            let known: Vec<&str> = Limit::ALL.iter().map(|(l, _)| l.name()).collect();
            format!("unknown limit {s:?}; the limits are {}", known.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_typos_are_refused() {
        for (l, _) in Limit::ALL {
            assert_eq!(Limit::parse(l.name()), Some(*l));
        }
        assert_eq!(Limit::MaxUsers.apple_default(), 100);
        let err = "maxUser".parse::<Limit>().unwrap_err();
        assert!(err.contains("maxUsers"), "{err}");
        assert!(Limit::parse("maxusers").is_none());
    }
}
