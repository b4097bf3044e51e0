//! Per-core services installed by the modules above the core (Seastar's `sharded<T>`): the group
//! coordinator lives on every core, installed by `groups`, without the core knowing its type; and
//! hooks those modules want run when a partition of this core gains its leadership.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use crate::partition::Partition;

/// Work to run when a partition of this core becomes leader (e.g. load its committed offsets).
pub type LeadershipHook = Rc<dyn Fn(Rc<Partition>) -> Pin<Box<dyn Future<Output = ()>>>>;

/// Most services a core hosts (a guard against installing in a loop).
pub const MAX_SERVICES_PER_CORE: usize = 32;

#[derive(Default)]
pub struct Services {
    by_type: RefCell<HashMap<TypeId, Rc<dyn Any>>>,
    on_leadership: RefCell<Vec<LeadershipHook>>,
}

impl Services {
    /// Installs this core's instance of `T`; each type is installed once per core.
    pub fn install<T: 'static>(&self, service: Rc<T>) {
        let mut by_type = self.by_type.borrow_mut();
        assert!(by_type.len() < MAX_SERVICES_PER_CORE, "at most {MAX_SERVICES_PER_CORE} services per core");
        let previous = by_type.insert(TypeId::of::<T>(), service);
        assert!(previous.is_none(), "a service is installed once per core: {}", std::any::type_name::<T>());
    }

    /// This core's instance of `T`, if installed.
    pub fn get<T: 'static>(&self) -> Option<Rc<T>> {
        let service = self.by_type.borrow().get(&TypeId::of::<T>()).cloned()?;
        service.downcast::<T>().ok()
    }

    /// Registers work run (in registration order) each time a partition here gains leadership.
    pub fn on_leadership(&self, hook: LeadershipHook) {
        let mut hooks = self.on_leadership.borrow_mut();
        assert!(hooks.len() < MAX_SERVICES_PER_CORE, "at most {MAX_SERVICES_PER_CORE} leadership hooks per core");
        hooks.push(hook);
    }

    /// The hooks to run for a new leadership.
    pub fn leadership_hooks(&self) -> Vec<LeadershipHook> {
        self.on_leadership.borrow().clone()
    }
}
