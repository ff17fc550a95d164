//! The topics the platform offers (`data/topics.json`, R5 `SubscriptionTopic` resources as
//! data): which resource types each fires on and which filters it takes.

use serde_json::Value;

/// One topic.
#[derive(Debug, Clone)]
pub struct Topic {
    pub url: String,
    pub id: String,
    pub title: String,
    /// The resource types it fires on (`*`: any).
    pub types: Vec<String>,
    /// The interactions it fires on (`create`, `update`, `delete`).
    pub interactions: Vec<String>,
    /// Whether any filter is allowed (`*`), else the parameters named.
    pub filters: Vec<String>,
    /// The resource as published.
    pub json: Value,
}

impl Topic {
    pub fn fires_on(&self, rtype: &str) -> bool {
        self.types.iter().any(|t| t == "*" || t == rtype)
    }

    pub fn takes_filters(&self) -> bool {
        !self.filters.is_empty()
    }

    pub fn fires_on_delete(&self) -> bool {
        self.interactions.iter().any(|i| i == "delete")
    }
}

/// The catalogue.
#[derive(Debug, Clone)]
pub struct Topics(Vec<Topic>);

/// The topic the platform fires for any change of a record.
pub const RECORD_CHANGED: &str = "https://hutong.dev/fhir/SubscriptionTopic/record-changed";
/// A Task owned by the subscriber's institution.
pub const TASK_ASSIGNED: &str = "https://hutong.dev/fhir/SubscriptionTopic/task-assigned";
/// The day's follow-up Task of a family-doctor centre.
pub const FOLLOW_UP_DUE: &str = "https://hutong.dev/fhir/SubscriptionTopic/follow-up-due";

impl Topics {
    /// The catalogue shipped with the platform.
    pub fn builtin() -> Topics {
        Topics::parse(include_str!("../data/topics.json")).expect("the shipped topics parse")
    }

    pub fn parse(text: &str) -> Result<Topics, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let list = v.as_array().ok_or("a JSON array of SubscriptionTopic")?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for t in list {
            let url = t["url"].as_str().ok_or("a topic without url")?.to_string();
            let triggers = t["resourceTrigger"].as_array().cloned().unwrap_or_default();
            out.push(Topic {
                id: t["id"].as_str().unwrap_or("").to_string(),
                title: t["title"].as_str().unwrap_or("").to_string(),
                types: triggers
                    .iter()
                    .filter_map(|r| r["resource"].as_str().map(String::from))
                    .collect(),
                interactions: triggers
                    .iter()
                    .flat_map(|r| strings(&r["supportedInteraction"]))
                    .collect(),
                filters: t["canFilterBy"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| f["filterParameter"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                url,
                json: t.clone(),
            });
        }
        Ok(Topics(out))
    }

    pub fn get(&self, url: &str) -> Option<&Topic> {
        // A canonical may carry a version (`url|1`).
        let bare = url.split('|').next().unwrap_or(url);
        self.0.iter().find(|t| t.url == bare)
    }

    pub fn all(&self) -> &[Topic] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalogue_names_the_three_topics() {
        let t = Topics::builtin();
        let rc = t.get(RECORD_CHANGED).unwrap();
        assert!(rc.fires_on("Observation") && rc.fires_on_delete() && rc.takes_filters());
        let ta = t.get(&format!("{TASK_ASSIGNED}|1")).unwrap();
        assert!(ta.fires_on("Task") && !ta.fires_on("Observation") && !ta.fires_on_delete());
        assert!(!t.get(FOLLOW_UP_DUE).unwrap().takes_filters());
        assert!(t.get("https://example.org/other").is_none());
    }
}
