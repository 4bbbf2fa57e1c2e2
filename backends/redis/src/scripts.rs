//! The Lua scripts behind every state change, loaded once per process.
//!
//! `redis::Script` sends EVALSHA and falls back to EVAL when Redis does not know the script
//! yet (after a restart, say), so nothing has to be preloaded.

use redis::Script;

/// What the expire script answers for a value it cannot settle (its status reply).
pub const UNREADABLE: &str = "UNREADABLE";

pub struct Scripts {
    pub park: Script,
    pub record: Script,
    pub decide: Script,
    pub expire: Script,
    pub foreign: Script,
    pub take_over: Script,
    pub put_bundle: Script,
    pub swap_policy_state: Script,
}

impl Scripts {
    pub fn load() -> Self {
        // Lua has no includes here: shared functions are prepended to the scripts using them.
        let values = include_str!("lua/values.lua");
        let common = format!("{values}\n{}", include_str!("lua/common.lua"));
        Self {
            park: Script::new(&format!("{values}\n{}", include_str!("lua/park.lua"))),
            record: Script::new(&format!("{values}\n{}", include_str!("lua/record.lua"))),
            decide: Script::new(&format!("{common}\n{}", include_str!("lua/decide.lua"))),
            expire: Script::new(&format!(
                "local UNREADABLE = '{UNREADABLE}'\n{common}\n{}",
                include_str!("lua/expire.lua")
            )),
            foreign: Script::new(include_str!("lua/foreign.lua")),
            take_over: Script::new(&format!("{common}\n{}", include_str!("lua/take_over.lua"))),
            put_bundle: Script::new(&format!("{values}\n{}", include_str!("lua/put_bundle.lua"))),
            swap_policy_state: Script::new(include_str!("lua/swap_policy_state.lua")),
        }
    }
}
