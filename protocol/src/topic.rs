//! Topic name rules (Kafka's): 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`. Names become
//! directory names under the data dir, so these rules also keep every path inside it.

/// Longest topic name (characters, which are bytes since only ASCII is allowed).
pub const TOPIC_NAME_LEN_MAX: usize = 249;

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name is {0} characters long; the limit is {TOPIC_NAME_LEN_MAX}")]
    TooLong(usize),
    #[error("topic name may not be '.' or '..'")]
    Dots,
    #[error(
        "topic name has the character {0:?}; only a-z, A-Z, 0-9, '.', '_' and '-' are allowed"
    )]
    BadChar(char),
    #[error("topic names starting with '__' are reserved for Ferry's internal topics")]
    Reserved,
}

/// Checks a name a user asked for (internal `__` names are refused).
pub fn validate_user_topic_name(name: &str) -> Result<(), TopicNameError> {
    validate_topic_name(name)?;
    if name.starts_with("__") {
        return Err(TopicNameError::Reserved);
    }
    Ok(())
}

/// Checks any topic name, internal ones included.
pub fn validate_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name.len() > TOPIC_NAME_LEN_MAX {
        return Err(TopicNameError::TooLong(name.chars().count()));
    }
    if name == "." || name == ".." {
        return Err(TopicNameError::Dots);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(TopicNameError::BadChar(c));
    }
    Ok(())
}

/// The internal topic whose partitions hold consumer groups' state and committed offsets. The leader of a
/// group's partition is the group's coordinator.
pub const GROUP_TOPIC: &str = "__consumer_offsets";
/// Partitions of [`GROUP_TOPIC`]: fixed, so every client and broker maps a group to the same partition.
pub const GROUP_TOPIC_PARTITIONS: u32 = 8;

/// The partition of [`GROUP_TOPIC`] that holds group `group` (Kafka's murmur2 of the name).
pub fn group_partition(group: &str) -> u32 {
    crate::partitioner::partition_for_key(group.as_bytes(), GROUP_TOPIC_PARTITIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(validate_user_topic_name("orders.v1_eu-west").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicNameError::Empty));
        assert_eq!(validate_topic_name(".."), Err(TopicNameError::Dots));
        assert_eq!(validate_topic_name("."), Err(TopicNameError::Dots));
        assert_eq!(
            validate_topic_name("a/b"),
            Err(TopicNameError::BadChar('/'))
        );
        assert_eq!(
            validate_topic_name("a\0b"),
            Err(TopicNameError::BadChar('\0'))
        );
        assert_eq!(validate_topic_name("é"), Err(TopicNameError::BadChar('é')));
        assert_eq!(
            validate_topic_name(&"x".repeat(250)),
            Err(TopicNameError::TooLong(250))
        );
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
        assert_eq!(
            validate_user_topic_name("__meta"),
            Err(TopicNameError::Reserved)
        );
    }
}
